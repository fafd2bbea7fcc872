"""The one lock helper: exclusive across descriptors (so across processes), released on exit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from metapt_core import locks


def test_second_holder_waits_and_is_told(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    order: list[str] = []
    waited = threading.Event()
    with locks.file_lock(path):
        assert not locks.is_free(path)
        assert locks.try_acquire(path) is None

        def second() -> None:
            with locks.file_lock(path, on_wait=waited.set):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(10)
        time.sleep(0.05)
        order.append("first")
    thread.join(10)
    assert order == ["first", "second"]
    assert locks.is_free(path) and path.exists()  # kept unless remove=True


def test_removed_lock_file_is_not_shared_by_two_holders(tmp_path: Path) -> None:
    path = tmp_path / "key.lock"
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, most
        for _ in range(20):
            with locks.file_lock(path, remove=True):
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == 1
    assert not path.exists()


def test_try_acquire_and_release(tmp_path: Path) -> None:
    path = tmp_path / "alive.lock"
    fd = locks.try_acquire(path)
    assert fd is not None and not locks.is_free(path)
    locks.release(fd, path)
    assert locks.is_free(path) and not path.exists()
    assert locks.is_free(tmp_path / "never-created.lock")
