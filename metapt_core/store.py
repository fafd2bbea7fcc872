"""Atomic, fingerprinted artifacts on local disk.

Every artifact is built under a temporary name in the same folder and renamed into place only
when complete, so a killed process leaves either the old artifact or none, never half of one.
A fingerprint (sha256 of the bytes; for a folder, of its sorted relative paths and file hashes)
is recorded next to it and checked before reuse.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metapt_core.errors import IntegrityError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_dir(path: str | os.PathLike[str], leave_out: Collection[str] = ()) -> str:
    """Hex sha256 over a folder: each file's relative path and content hash, in sorted order.

    ``digest = sha256(concat over sorted files f of  rel(f) || 0x00 || sha256_file(f) || "\\n")``.
    Files whose relative path is in ``leave_out`` and temporary files (``*.tmp-*``) are left out;
    an asset folder leaves out the manifest that records this value.
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel in leave_out or ".tmp-" in file.name:
            continue
        digest.update(rel.encode())
        digest.update(b"\0")
        digest.update(sha256_file(file).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of a file or a folder (see :func:`sha256_dir`)."""
    p = Path(path)
    return sha256_dir(p) if p.is_dir() else sha256_file(p)


def stable_hash(obj: Any) -> str:
    """sha256 of a JSON-serialisable object with sorted keys: a cache key for settings."""
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _tmp_name(target: Path) -> Path:
    return target.with_name(f"{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    Works for a file or a folder written at the yielded path. On error the temporary is removed
    and ``target`` is left as it was.
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        if final.is_dir() and not final.is_symlink():
            # A folder cannot be renamed over a non-empty one: move the old aside first.
            old = _tmp_name(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@dataclass(frozen=True)
class ArtifactRef:
    """A reference to a stored artifact: where it is and what its content hashes to.

    Passed between pipeline stages instead of the data itself; the fingerprint makes a cache key
    change whenever the content does, even if the path stays the same.
    """

    path: str
    sha256: str

    def verify(self) -> ArtifactRef:
        """Raise :class:`IntegrityError` unless the artifact exists and matches its fingerprint."""
        p = Path(self.path)
        if not p.exists():
            raise IntegrityError(f"artifact {self.path!r} is missing")
        actual = fingerprint(p)
        if actual != self.sha256:
            raise IntegrityError(
                f"artifact {self.path!r} was altered: sha256 {actual[:12]} != recorded {self.sha256[:12]}"
            )
        return self

    def is_valid(self) -> bool:
        """True if the artifact exists and matches its fingerprint."""
        try:
            self.verify()
        except IntegrityError:
            return False
        return True

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> ArtifactRef:
        """Fingerprint an existing file or folder."""
        return cls(path=str(Path(path).resolve()), sha256=fingerprint(path))


def seal(path: str | os.PathLike[str]) -> ArtifactRef:
    """Fingerprint a finished artifact and record it in ``<path>.sha256`` (atomically)."""
    ref = ArtifactRef.of(path)
    atomic_write_text(f"{Path(path)}.sha256", ref.sha256 + "\n")
    return ref


def open_sealed(path: str | os.PathLike[str]) -> ArtifactRef | None:
    """The artifact at ``path`` if it exists and matches its recorded seal, else None."""
    p = Path(path)
    seal_file = Path(f"{p}.sha256")
    if not p.exists() or not seal_file.exists():
        return None
    ref = ArtifactRef(path=str(p.resolve()), sha256=seal_file.read_text().strip())
    return ref if ref.is_valid() else None
