"""The artifact store is the stage cache: one content-addressed folder per stage computation.

A stage's key is the sha256 of (stage name, code version, the settings the stage reads, the
sha256 of every upstream artifact). Its output lives in ``<work_dir>/artifacts/<stage>/<key[:16]>/``:
``out/`` (the folder handed to the core function) and ``record.json`` (the output reference,
stats, and the MLflow run that computed it). A record is trusted only if the artifact it points
to still matches its fingerprint, so a deleted or altered artifact is recomputed. The folder is
built in ``<key[:16]>.partial/`` and renamed into place, so a failure leaves the previous state.

Checking a fingerprint reads every byte. The record also keeps a signature of ``out/``: each
file's relative path, size, modification time (ns) and inode. When the signature is unchanged
the content is trusted without reading it; when anything differs (a write, a copy, a touch), or
with ``METAPT_VERIFY=1`` (``metapt run --verify``), the sha256 of every file is checked as before.

Resume and concurrency: the computing process holds an exclusive lock on ``<key[:16]>.lock``
(``flock``, released by the kernel even on SIGKILL), so a second process or flow run that needs
the same output waits, then serves it from the store. The ``.partial`` folder is named by the key,
not at random, so a run that was killed leaves its checkpoints (``out.ckpt/`` beside ``out/``,
written by the pre-training loops) where the next run of the same key finds and resumes them.

Prefect's own result cache is not used for stages: it would skip the task body (and with it the
MLflow trace of a cache hit), hash only the task's source, and trust a result whose artifact was
deleted. The store key covers all of this and is shared by every process and flow run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt_core.locks import file_lock
from metapt_core.store import ArtifactRef, atomic_write_json, fingerprint, stable_hash

RECORD = "record.json"
OUT = "out"
PARTIAL = ".partial"
LOCK = ".lock"
CHECKPOINT_SUFFIX = ".ckpt"  # folders kept in a .partial folder across a kill (resume)
VERIFY_ENV = "METAPT_VERIFY"  # "1": check every stored artifact's sha256, ignore signatures


def signature(folder: Path) -> list[list[Any]]:
    """``[relative path, size, mtime_ns, inode]`` of every file under ``folder``, sorted."""
    rows = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            stat = path.stat()
            rel = path.relative_to(folder).as_posix()
            rows.append([rel, stat.st_size, stat.st_mtime_ns, stat.st_ino])
    return rows


def verify_all() -> bool:
    """True when every lookup must check sha256s (``METAPT_VERIFY=1``)."""
    return os.environ.get(VERIFY_ENV, "") == "1"


@dataclass(frozen=True)
class StageOutcome:
    """What a stage task returns: a reference to its output and plain data for tracking."""

    stage: str
    key: str
    ref: ArtifactRef
    stats: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    source_run_id: str = ""  # the MLflow run that computed this output
    seconds: float = 0.0  # compute time of the run that computed it
    run_id: str = ""  # the MLflow run of this pipeline run that shows it (computed or cached)


def stage_key(stage: str, code: str, settings: Any, upstream: dict[str, ArtifactRef]) -> str:
    """sha256 of what determines a stage's output: its code, its settings, its inputs' content."""
    return stable_hash(
        {
            "stage": stage,
            "code": code,
            "settings": settings,
            "upstream": {name: ref.sha256 for name, ref in sorted(upstream.items())},
        }
    )


def artifacts_root(work_dir: str | os.PathLike[str]) -> Path:
    return Path(work_dir).expanduser().resolve() / "artifacts"


def stage_folder(work_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    """The content-addressed folder of one stage computation."""
    return artifacts_root(work_dir) / stage / key[:16]


def partial_folder(work_dir: str | os.PathLike[str], stage: str, key: str) -> Path:
    """Where ``key`` is computed: stable, so a killed computation's checkpoints are found again."""
    final = stage_folder(work_dir, stage, key)
    return final.with_name(final.name + PARTIAL)


@contextlib.contextmanager
def stage_lock(
    work_dir: str | os.PathLike[str],
    stage: str,
    key: str,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold the exclusive lock of one stage computation (across processes and threads).

    ``on_wait`` is called once if another holder makes us wait. The lock file is removed on
    release (:func:`metapt_core.locks.file_lock` with ``remove``).
    """
    final = stage_folder(work_dir, stage, key)
    with file_lock(final.with_name(final.name + LOCK), on_wait=on_wait, remove=True):
        yield


def lookup(
    work_dir: str | os.PathLike[str], stage: str, key: str, verify: bool | None = None
) -> StageOutcome | None:
    """The stored outcome for ``key`` if its record exists and its artifact is intact, else None.

    Intact: the ``out/`` signature is the recorded one (unless ``verify``, default
    :func:`verify_all`), else every fingerprint matches.
    """
    folder = stage_folder(work_dir, stage, key)
    record_file = folder / RECORD
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text("utf-8"))
        if record.get("key") != key:
            return None
        ref = ArtifactRef(path=str(folder / record["ref"]["rel"]), sha256=record["ref"]["sha256"])
    except (ValueError, KeyError, TypeError):
        return None
    verify = verify_all() if verify is None else verify
    recorded = record.get("signature")
    unchanged = (
        not verify
        and recorded is not None
        and (folder / OUT).is_dir()
        and signature(folder / OUT) == recorded
    )
    if not unchanged:
        if not ref.is_valid():
            return None
        # The whole output folder too: a file beside the reference (diagnostics) may be altered.
        whole = record.get("out_sha256")
        if whole is not None and (
            not (folder / OUT).is_dir() or fingerprint(folder / OUT) != whole
        ):
            return None
    return StageOutcome(
        stage=stage,
        key=key,
        ref=ref,
        stats=record.get("stats", {}),
        cached=True,
        source_run_id=record.get("source_run_id", ""),
        seconds=float(record.get("seconds", 0.0)),
    )


def recorded_stats(ref: ArtifactRef) -> dict[str, Any]:
    """The plain stats stored with the stage output ``ref`` (its record, beside ``out/``):
    what the stage's task returned, whether this run computed it or served it.

    Raises:
        LookupError: ``ref`` is not a stored stage output, or its record holds another one.
    """
    path = Path(ref.path)
    for folder in (path, *path.parents):
        record_file = folder.parent / RECORD
        if folder.name == OUT and record_file.is_file():
            record = json.loads(record_file.read_text("utf-8"))
            if record.get("ref", {}).get("sha256") != ref.sha256:
                break
            return dict(record.get("stats", {}))
    raise LookupError(f"no stored stage record holds {ref.path!r} ({ref.sha256[:16]})")


def _relative(ref: ArtifactRef, root: Path) -> str:
    path = Path(ref.path).resolve()
    try:
        return path.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise ValueError(f"stage output {ref.path!r} is outside its folder {str(root)!r}") from None


class PendingStage:
    """A stage computation in progress in its ``.partial`` folder; :meth:`commit` moves it into place.

    Create it only while holding :func:`stage_lock` for the key. Whatever a killed run left in
    the folder is removed, except checkpoint folders (``*.ckpt``), which the core functions
    resume from.
    """

    def __init__(self, work_dir: str | os.PathLike[str], stage: str, key: str) -> None:
        self.stage = stage
        self.key = key
        self.final = stage_folder(work_dir, stage, key)
        self.scratch = partial_folder(work_dir, stage, key)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.resumable = _clean_partial(self.scratch)
        self.out_dir = self.scratch / OUT
        self.out_dir.mkdir()
        self.started = time.monotonic()

    def commit(
        self, ref: ArtifactRef, stats: dict[str, Any], source_run_id: str, extra: dict[str, Any]
    ) -> StageOutcome:
        """Record the finished output and rename the scratch folder onto the stage folder."""
        seconds = time.monotonic() - self.started
        rel = _relative(ref, self.scratch)
        record = {
            "key": self.key,
            "stage": self.stage,
            "ref": {"rel": rel, "sha256": ref.sha256},
            "out_sha256": fingerprint(self.out_dir),
            # renaming the folder into place keeps each file's inode and mtime
            "signature": signature(self.out_dir),
            "stats": stats,
            "source_run_id": source_run_id,
            "seconds": seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        atomic_write_json(self.scratch / RECORD, record)
        if self.final.exists():
            aside = self.final.with_name(f"{self.final.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(self.final, aside)
            os.replace(self.scratch, self.final)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(self.scratch, self.final)
        return StageOutcome(
            stage=self.stage,
            key=self.key,
            ref=ArtifactRef(path=str(self.final / rel), sha256=ref.sha256),
            stats=stats,
            cached=False,
            source_run_id=source_run_id,
            seconds=seconds,
            run_id=source_run_id,
        )

    def abort(self) -> None:
        """Remove the partial output but keep checkpoints (the stage folder is left as it was)."""
        if not _clean_partial(self.scratch):
            shutil.rmtree(self.scratch, ignore_errors=True)


def _clean_partial(folder: Path) -> list[str]:
    """Empty a ``.partial`` folder except its checkpoint folders; their names."""
    kept = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
        if entry.is_dir() and entry.name.endswith(CHECKPOINT_SUFFIX):
            kept.append(entry.name)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return kept


def clear(work_dir: str | os.PathLike[str], stage: str | None = None) -> list[Path]:
    """Remove the stored outputs of one stage (or all); returns the folders removed."""
    root = artifacts_root(work_dir)
    targets = (
        [root / stage]
        if stage
        else ([p for p in root.iterdir() if p.is_dir()] if root.is_dir() else [])
    )
    removed = []
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
            removed.append(target)
    return removed
