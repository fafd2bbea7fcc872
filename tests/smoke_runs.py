"""Helpers for the tests that run the real ``metapt run --profile smoke`` as processes.

Not a test module. Every run gets an isolated Prefect home (no user profile, hence an ephemeral
Prefect server under its work dir) and SQLite MLflow under its work dir; it inherits
``OMP_WAIT_POLICY=PASSIVE`` (set by ``conftest``) so torch does not stall on a shared machine.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RUN_TIMEOUT_S = 1200
# What results.csv must agree on between runs (wall_seconds and the like may differ).
RESULT_COLUMNS = ("cell_id", "task", "init", "shots", "seed", "test_accuracy", "test_macro_f1")


def isolated_env(home: Path) -> dict[str, str]:
    """The environment of a pipeline process: no Prefect API or profile, no MLflow server."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "METAPT_"))
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        OMP_WAIT_POLICY="PASSIVE",
        PYTHONUNBUFFERED="1",
    )
    return env


def run_command(work: Path, assets: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "metapt"),
        "run",
        "--profile",
        "smoke",
        "--set",
        f"work_dir={work}",
        "--set",
        f"assets_dir={assets}",
        *extra,
    ]


@dataclass
class RunResult:
    returncode: int
    output: str
    seconds: float
    killed: bool


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start ``cmd`` in its own process group (so a kill takes its Prefect server along)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def follow(
    proc: subprocess.Popen[str],
    log: Path,
    kill_when: Callable[[str], bool] | None = None,
    timeout_s: float = RUN_TIMEOUT_S,
) -> RunResult:
    """Read ``proc``'s output to ``log``; SIGKILL its process group at the first line that
    satisfies ``kill_when`` (or after ``timeout_s``)."""
    started = time.monotonic()
    killed = False
    watchdog = threading.Timer(timeout_s, kill_group, args=(proc,))
    watchdog.start()
    lines: list[str] = []
    try:
        with open(log, "w", encoding="utf-8") as out:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                out.write(line)
                out.flush()
                if kill_when is not None and not killed and kill_when(line):
                    kill_group(proc)
                    killed = True
        proc.wait()
    finally:
        watchdog.cancel()
        kill_group(proc)  # whatever the run left behind in its group
        proc.wait()
    return RunResult(proc.returncode, "".join(lines), time.monotonic() - started, killed)


def run(
    work: Path,
    assets: Path,
    env: dict[str, str],
    log: Path,
    *extra: str,
    kill_when: Callable[[str], bool] | None = None,
) -> RunResult:
    """One ``metapt run --profile smoke`` in ``work``, optionally killed at a log line."""
    return follow(start(run_command(work, assets, *extra), env, log), log, kill_when)


def results_table(work: Path) -> list[dict[str, str]]:
    """The rows of the (single) stored results.csv, reduced to :data:`RESULT_COLUMNS`."""
    files = sorted((work / "artifacts" / "report").glob("*/out/**/results.csv"))
    assert len(files) == 1, files
    with open(files[0], newline="", encoding="utf-8") as handle:
        rows = [{k: row[k] for k in RESULT_COLUMNS} for row in csv.DictReader(handle)]
    return sorted(rows, key=lambda r: r["cell_id"])


def records(work: Path) -> dict[str, list[dict[str, object]]]:
    """The store's records by stage (one per stored key)."""
    out: dict[str, list[dict[str, object]]] = {}
    for record in sorted((work / "artifacts").glob("*/*/record.json")):
        out.setdefault(record.parent.parent.name, []).append(json.loads(record.read_text()))
    return out


def leftovers(work: Path) -> list[Path]:
    """Scratch, partial, lock and temporary files left in the store."""
    root = work / "artifacts"
    return sorted(
        p
        for p in root.rglob("*")
        if ".tmp-" in p.name
        or p.name.startswith(".scratch-")
        or p.name.endswith((".partial", ".lock", ".ckpt"))
        or ".old-" in p.name
    )
