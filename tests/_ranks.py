"""Kill one torchrun rank from outside, as a crash would (not a test module)."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import psutil


def _watch(
    ready: Callable[[], bool],
    matches: Callable[[list[str]], bool],
    stop: threading.Event,
    killed: list[int],
) -> None:
    while not stop.is_set() and not killed:
        if ready():
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    cmd = proc.info["cmdline"] or []
                    if matches(cmd) and proc.environ().get("RANK") == "1":
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        time.sleep(0.02)


@contextlib.contextmanager
def killing_rank_one(
    ready: Callable[[], bool], matches: Callable[[list[str]], bool]
) -> Iterator[list[int]]:
    """While the block runs, SIGKILL rank 1 of the first process whose command line
    ``matches``, once ``ready()`` (a checkpoint is on disk); yields the pids killed."""
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_watch, args=(ready, matches, stop, killed), daemon=True)
    watcher.start()
    try:
        yield killed
    finally:
        stop.set()
        watcher.join()
