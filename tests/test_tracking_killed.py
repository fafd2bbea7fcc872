"""A pipeline run whose process was killed is marked KILLED (with its children) by the next run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from metapt_core.config import load_config
from tasks.tracking import ALIVE_TAG, HOST_TAG, KIND_TAG, Tracker, hold_alive, release_alive

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
from tasks.tracking import hold_alive
hold_alive(Path({lock!r}))
print("holding", flush=True)
time.sleep(600)
"""


def pipeline_run(tracker: Tracker, lock: Path) -> str:
    tags = {KIND_TAG: "pipeline", HOST_TAG: socket.gethostname(), ALIVE_TAG: str(lock)}
    return tracker.start_run("pipeline", tags=tags, parent_run_id="")


def status(tracker: Tracker, run_id: str) -> str:
    return str(tracker.client.get_run(run_id).info.status)


def test_killed_run_and_its_children_are_marked_killed(tmp_path: Path) -> None:
    cfg = load_config("smoke", overrides=[f"work_dir={tmp_path / 'work'}"])
    tracker = Tracker.open(cfg)
    root = str(Path(__file__).resolve().parent.parent)

    # A run whose process is SIGKILLed while it holds its lock (the kernel releases it).
    dead_lock = tmp_path / "dead.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(root=root, lock=str(dead_lock))],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    dead = pipeline_run(tracker, dead_lock)
    stage = tracker.start_run("stage", tags={KIND_TAG: "stage"}, parent_run_id=dead)
    cell = tracker.start_run("cell", tags={KIND_TAG: "cell"}, parent_run_id=stage)
    done = tracker.start_run("done", tags={KIND_TAG: "stage"}, parent_run_id=dead)
    tracker.end(done)

    # A run that is alive: this process holds its lock.
    live_lock = tmp_path / "live.lock"
    fd = hold_alive(live_lock)
    live = pipeline_run(tracker, live_lock)
    live_child = tracker.start_run("stage", tags={KIND_TAG: "stage"}, parent_run_id=live)

    assert tracker.reap_killed() == []  # the holder still lives
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    time.sleep(0.1)
    killed = tracker.reap_killed()
    assert sorted(killed) == sorted([dead, stage, cell])
    for run_id in (dead, stage, cell):
        assert status(tracker, run_id) == "KILLED"
    assert status(tracker, done) == "FINISHED"
    assert status(tracker, live) == "RUNNING" and status(tracker, live_child) == "RUNNING"
    assert tracker.reap_killed() == []  # nothing twice
    release_alive(live_lock, fd)
    assert not live_lock.exists()
    tracker.end(live_child)
    tracker.end(live)
