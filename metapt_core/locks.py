"""Exclusive file locks (``flock``): the one lock helper of the project.

An ``flock`` is held by an open file description and released by the kernel when its process
dies, even on SIGKILL, so no lock outlives its holder. Used for: one computation per stage key
(the store), one build per asset, the first connection to a new SQLite tracking store, the
shared Prefect home of a work folder, and the liveness of a pipeline run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def acquire(path: Path, on_wait: Callable[[], None] | None = None) -> int:
    """Lock ``path`` (created if missing), waiting for another holder; the open descriptor.

    ``on_wait`` is called once if the lock is held elsewhere, before waiting.
    """
    fd = _open(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


def try_acquire(path: Path) -> int | None:
    """Lock ``path`` if nobody holds it (the open descriptor), else None, without waiting."""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def release(fd: int, path: Path | None = None) -> None:
    """Release a lock (closing its descriptor); remove ``path`` first if given."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    os.close(fd)


def is_free(path: Path) -> bool:
    """True if nobody holds ``path`` locked (a missing file: its holder is gone too)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


@contextlib.contextmanager
def file_lock(
    path: Path, on_wait: Callable[[], None] | None = None, remove: bool = False
) -> Iterator[None]:
    """Hold the exclusive lock of ``path`` for the block.

    With ``remove``, the file is deleted on release, and a waiter that then finds its file
    unlinked (or replaced) locks the current one, so two holders can never hold different files
    of the same name.
    """
    waited = False

    def waiting() -> None:
        nonlocal waited
        if not waited and on_wait is not None:
            on_wait()
        waited = True

    while True:
        fd = acquire(path, waiting)
        if not remove:
            break
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed that file: lock the current one
    try:
        yield
    finally:
        release(fd, path if remove else None)
