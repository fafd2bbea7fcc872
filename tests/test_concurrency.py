"""Two pipeline runs at once on the same work dir (artifact store, MLflow store, Prefect home).

Both succeed with identical results; each stage output is computed once (the other run waits
on the stage's lock, then serves it from the store); no scratch or partial files are left.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from smoke_runs import (
    RunResult,
    follow,
    isolated_env,
    leftovers,
    records,
    results_table,
    run_command,
    start,
)

pytestmark = pytest.mark.slow

COMPUTING = re.compile(r" - ([\w-]+): computing \(key")


def test_two_runs_on_one_store(tmp_path: Path, assets_dir: Path) -> None:
    work = tmp_path / "work"
    results: dict[str, RunResult] = {}
    procs = {
        name: start(
            run_command(work, assets_dir),
            isolated_env(tmp_path / f"home-{name}"),
            tmp_path / f"{name}.log",
        )
        for name in ("a", "b")
    }

    def watch(name: str) -> None:
        results[name] = follow(procs[name], tmp_path / f"{name}.log")

    threads = [threading.Thread(target=watch, args=(name,)) for name in procs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, result in results.items():
        print(f"run {name}: {result.seconds:.1f} s")
        assert result.returncode == 0, f"run {name}:\n" + result.output[-4000:]

    tables = []
    for name in ("a", "b"):
        report = re.search(r"MLflow run: (\w+)", results[name].output)
        assert report, results[name].output[-2000:]
        tables.append(results[name].output.split("# results", 1)[1].split("MLflow run:")[0])
    assert tables[0] == tables[1]  # the same report printed by both
    assert len(results_table(work)) == 6

    computed = [m for r in results.values() for m in COMPUTING.findall(r.output)]
    assert sorted(computed) == sorted(
        [
            "ingest-pool",
            "ingest-tasks",
            "embed",
            "cluster",
            "ppt-p0",
            "meta-pretrain-maml-p0",
            "meta-objective-p0",
            "evaluate-mr-k2-s0-p0",
            "evaluate-mr-k2-s1-p0",
            "report",
        ]
    ), "each stage output must be computed by exactly one of the runs"
    stored = {stage: len(recs) for stage, recs in records(work).items()}
    assert stored == {
        "ingest-pool": 1,
        "ingest-tasks": 1,
        "embed": 1,
        "cluster": 1,
        "ppt": 1,
        "meta-pretrain": 1,
        "meta-objective": 1,
        "evaluate-cells": 2,
        "report": 1,
    }
    assert leftovers(work) == []
