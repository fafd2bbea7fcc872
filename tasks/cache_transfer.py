"""Carry stored stages to another machine: one archive out of a store, into another store.

What you come for: a pre-training computed on a GPU box (or in an earlier sitting on a machine
that is gone) served on another one, and a long stage that was stopped resumed elsewhere.

``export_archive`` writes a ``.tar.gz`` holding, for every chosen stage, each intact stored
computation (``<stage>/<key[:16]>/record.json`` and ``out/``) and the checkpoints a stopped
computation left (``<stage>/<key[:16]>.partial/*.ckpt/``), with ``manifest.json`` listing them.
``import_archive`` unpacks it beside the target store, checks every stored computation as the
store itself would (its record names its folder and stage, ``out/`` matches the recorded
sha256), and only then moves each into place, under the stage's lock. An archive that fails a
check leaves the target store untouched, and the temporary folder is removed.

A stage's key covers its code, settings and inputs, not the machine: a computation imported from
an Intel Xeon is served on an AMD EPYC as it is. Its record keeps where and when it was computed
(``machine``, ``created``) and the MLflow run that computed it (``source_run_id``, which lives
in the other machine's tracking store).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from metapt_core.errors import MetaptError
from metapt_core.store import atomic_path, atomic_write_json
from tasks.cache import (
    CHECKPOINT_SUFFIX,
    OUT,
    PARTIAL,
    RECORD,
    artifacts_root,
    lookup,
    signature,
    stage_folder,
    stage_lock,
)

MANIFEST = "manifest.json"
ARTIFACTS = "artifacts"  # the unpacked copy is a store of its own: <scratch>/artifacts/<stage>/...
FORMAT = "metapt-stage-archive/1"
# <stage>/<key[:16]>/... or <stage>/<key[:16]>.partial/<name>.ckpt/...
_STAGE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_MEMBER = re.compile(r"^[a-z0-9][a-z0-9_-]*/[0-9a-f]{16}(\.partial/[^/]+\.ckpt)?(/.*)?$")


@dataclass(frozen=True)
class Entry:
    """One stored computation (``kind="stored"``) or one stopped computation's checkpoints
    (``kind="checkpoint"``) in an archive."""

    stage: str
    folder: str  # key[:16]
    kind: str
    key: str = ""  # the full key (stored computations)
    created: str = ""
    machine: str = ""

    @property
    def label(self) -> str:
        return f"{self.stage}/{self.folder}" + ("" if self.kind == "stored" else PARTIAL)


def stored_entries(
    work_dir: str | os.PathLike[str], stages: Iterable[str] | None = None
) -> list[Entry]:
    """The intact stored computations and the stopped computations' checkpoints under
    ``work_dir``, for ``stages`` (all when None; a stage with nothing stored adds nothing),
    sorted by stage and key. A damaged output is left out: it would be recomputed here too."""
    root = artifacts_root(work_dir)
    found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    names = [name for name in found if _STAGE.match(name)]  # not a killed import's scratch
    wanted = names if stages is None else [stage for stage in stages if stage in names]
    return [
        entry
        for stage in wanted
        for child in sorted((root / stage).iterdir())
        for entry in _entries_of(work_dir, stage, child)
    ]


def _entries_of(work_dir: str | os.PathLike[str], stage: str, child: Path) -> list[Entry]:
    if child.name.endswith(PARTIAL) and child.is_dir():
        final = child.with_name(child.name[: -len(PARTIAL)])
        has_ckpt = any(p.is_dir() and p.name.endswith(CHECKPOINT_SUFFIX) for p in child.iterdir())
        if has_ckpt and not (final / RECORD).is_file():
            return [Entry(stage, final.name, "checkpoint")]
        return []
    record_file = child / RECORD
    if not record_file.is_file():
        return []
    record = json.loads(record_file.read_text("utf-8"))
    key = str(record.get("key", ""))
    if lookup(work_dir, stage, key, verify=True) is None:  # damaged: not carried anywhere
        return []
    return [
        Entry(
            stage,
            child.name,
            "stored",
            key=key,
            created=str(record.get("created", "")),
            machine=str(record.get("machine", "")),
        )
    ]


def export_archive(
    work_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    stages: Iterable[str] | None = None,
) -> list[Entry]:
    """Write the ``stages``' stored computations and checkpoints (all stages when None) to the
    ``.tar.gz`` ``out``, atomically; returns what it holds.

    Raises:
        MetaptError: nothing to export (of the named stages, when named).
    """
    chosen = None if stages is None else list(stages)
    entries = stored_entries(work_dir, chosen)
    if not entries:
        what = "no stage output" if chosen is None else f"nothing of {', '.join(chosen)}"
        raise MetaptError(f"work_dir={str(work_dir)!r}: the store holds {what} to export")
    root = artifacts_root(work_dir)
    manifest = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "entries": [dataclasses.asdict(entry) for entry in entries],
    }
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz") as tar:
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
        for entry in entries:
            if entry.kind == "stored":
                base = root / entry.stage / entry.folder
                tar.add(base / RECORD, f"{entry.stage}/{entry.folder}/{RECORD}")
                tar.add(base / OUT, f"{entry.stage}/{entry.folder}/{OUT}")
            else:
                partial = root / entry.stage / (entry.folder + PARTIAL)
                for ckpt in sorted(partial.iterdir()):
                    if ckpt.is_dir() and ckpt.name.endswith(CHECKPOINT_SUFFIX):
                        tar.add(ckpt, f"{entry.stage}/{entry.folder}{PARTIAL}/{ckpt.name}")
    return entries


def import_archive(
    work_dir: str | os.PathLike[str], archive: str | os.PathLike[str]
) -> tuple[list[Entry], list[Entry]]:
    """Unpack ``archive`` into ``work_dir``'s store; returns ``(imported, already there)``.

    Every stored computation is checked before any is moved into place; one that is already
    stored intact (or a checkpoint whose computation finished here) is left as it is.

    Raises:
        MetaptError: the archive cannot be read, holds a path outside the store's layout or a
            link, or a computation fails its check (the store is then left untouched).
    """
    path = Path(archive)
    root = artifacts_root(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
    try:
        entries = _unpack(path, scratch)
        for entry in entries:
            _check(path, scratch, entry)
        imported: list[Entry] = []
        present: list[Entry] = []
        for entry in entries:
            (imported if _place(work_dir, scratch, entry) else present).append(entry)
        return imported, present
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(archive: Path, scratch: Path) -> list[Entry]:
    """Extract ``archive`` into ``scratch`` after checking every member; its manifest's entries."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                name = PurePosixPath(member.name).as_posix()
                if name == MANIFEST:
                    continue
                if (
                    not (member.isfile() or member.isdir())
                    or not _MEMBER.match(name)
                    or ".." in name.split("/")
                ):
                    raise MetaptError(
                        f"archive={str(archive)!r}: member {member.name!r} is not a stage file"
                    )
            tar.extractall(scratch / ARTIFACTS, filter="data")
        manifest = json.loads((scratch / ARTIFACTS / MANIFEST).read_text("utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        entries = [Entry(**entry) for entry in manifest["entries"]]
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MetaptError(f"archive={str(archive)!r}: not a stage archive ({reason})") from None
    for entry in entries:  # the manifest names folders: they must be the store's too
        if entry.kind not in ("stored", "checkpoint") or not _MEMBER.match(
            f"{entry.stage}/{entry.folder}"
        ):
            raise MetaptError(
                f"archive={str(archive)!r}: manifest entry {entry.label!r} is not a stage"
            )
    return entries


def _check(archive: Path, scratch: Path, entry: Entry) -> None:
    """A stored computation is intact by the store's own check (:func:`tasks.cache.lookup` with
    ``verify``, run on the unpacked copy) and its reference lies inside its ``out/``; a
    checkpoint entry holds at least one checkpoint folder."""
    folder = scratch / ARTIFACTS / entry.stage / entry.folder
    try:
        if entry.kind == "checkpoint":
            partial = folder.with_name(folder.name + PARTIAL)
            ok = any(p.is_dir() and p.name.endswith(CHECKPOINT_SUFFIX) for p in partial.iterdir())
        else:
            record = json.loads((folder / RECORD).read_text("utf-8"))
            rel = PurePosixPath(record["ref"]["rel"])
            ok = (
                rel.parts[:1] == (OUT,)
                and ".." not in rel.parts
                and entry.key[:16] == entry.folder
                and record.get("stage") == entry.stage
                and lookup(scratch, entry.stage, entry.key, verify=True) is not None
            )
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        raise MetaptError(
            f"archive={str(archive)!r}: {entry.label} does not match its record "
            "(altered, truncated or missing); nothing was imported"
        )


def _place(work_dir: str | os.PathLike[str], scratch: Path, entry: Entry) -> bool:
    """Move one checked entry into the store under its stage's lock; False if already there."""
    final = stage_folder(work_dir, entry.stage, entry.folder)
    final.parent.mkdir(parents=True, exist_ok=True)
    with stage_lock(work_dir, entry.stage, entry.folder):
        if entry.kind == "stored":
            if lookup(work_dir, entry.stage, entry.key) is not None:
                return False
            source = scratch / ARTIFACTS / entry.stage / entry.folder
            record = json.loads((source / RECORD).read_text("utf-8"))
            # checked above; re-signed so the store trusts the copy without hashing it each time
            aside = final.with_name(f"{final.name}.old-{os.getpid()}-{time.time_ns()}")
            if final.exists():
                os.replace(final, aside)
            os.replace(source, final)
            record["signature"] = signature(final / OUT)
            atomic_write_json(final / RECORD, record)
            shutil.rmtree(aside, ignore_errors=True)
            return True
        if (final / RECORD).is_file():
            return False  # finished here: its checkpoints are not needed
        partial = final.with_name(final.name + PARTIAL)
        partial.mkdir(exist_ok=True)
        moved = False
        for ckpt in sorted(
            (scratch / ARTIFACTS / entry.stage / (entry.folder + PARTIAL)).iterdir()
        ):
            if not (partial / ckpt.name).exists():
                os.replace(ckpt, partial / ckpt.name)
                moved = True
        return moved
