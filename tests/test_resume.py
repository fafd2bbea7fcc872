"""Interruption and resume with real processes: SIGKILL during meta-pretraining and during the grid.

The rerun serves every finished stage and grid group from the store, continues meta-pretraining
from its last checkpoint, and ends with the same results (and the same meta-learned prompt) as
an uninterrupted run on CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from smoke_runs import isolated_env, leftovers, records, results_table, run

pytestmark = pytest.mark.slow

UPSTREAM = ("ingest-pool", "ingest-tasks", "embed", "cluster", "ppt", "meta-pretrain")


@pytest.fixture
def reference(smoke_reference: Path) -> Path:
    """The work dir of one uninterrupted smoke run."""
    return smoke_reference


def prompt_files(work: Path) -> dict[str, bytes]:
    """The meta-learned prompt and its training history, as stored."""
    (out,) = (work / "artifacts" / "meta-pretrain").glob("*/out")
    return {name: (out / name).read_bytes() for name in ("prompt.safetensors", "history.json")}


def test_kill_during_meta_pretraining_resumes_from_checkpoint(
    reference: Path, tmp_path: Path, assets_dir: Path
) -> None:
    work, env = tmp_path / "work", isolated_env(tmp_path / "home")
    # The progress line of step 2 comes after that step's checkpoint is written.
    killed = run(
        work,
        assets_dir,
        env,
        tmp_path / "killed.log",
        kill_when=lambda line: "meta-pretrain-maml-p0: 2/3" in line,
    )
    assert killed.killed, killed.output[-4000:]
    print(f"killed after {killed.seconds:.1f} s")
    partial = list((work / "artifacts" / "meta-pretrain").glob("*.partial"))
    assert len(partial) == 1 and (partial[0] / "out.ckpt" / "last.pt").is_file()
    assert "meta-pretrain" not in records(work)  # nothing half-written is recorded

    resumed = run(work, assets_dir, env, tmp_path / "resumed.log")
    assert resumed.returncode == 0, resumed.output[-4000:]
    print(f"resumed run: {resumed.seconds:.1f} s")
    out = resumed.output
    for name in ("ingest-pool", "ingest-tasks", "embed", "cluster", "ppt-p0"):
        assert f"{name}: served from cache" in out, name
    assert "meta-pretrain-maml-p0: computing" in out and "resuming from out.ckpt" in out
    assert "metapt-maml: resuming from step 2 of 3" in out
    assert "meta-pretrain-maml-p0: 3/3" in out and "meta-pretrain-maml-p0: 1/3" not in out
    assert prompt_files(work) == prompt_files(reference)  # bit-identical on CPU
    assert results_table(work) == results_table(reference)
    assert leftovers(work) == []


def test_kill_during_grid_serves_finished_groups(
    reference: Path, tmp_path: Path, assets_dir: Path
) -> None:
    work, env = tmp_path / "work", isolated_env(tmp_path / "home")
    # The pre-training stages come from the reference's store (a copy): this run starts at the grid.
    for stage in UPSTREAM:
        shutil.copytree(reference / "artifacts" / stage, work / "artifacts" / stage)
    killed = run(
        work,
        assets_dir,
        env,
        tmp_path / "killed.log",
        kill_when=lambda line: "evaluate-mr-k2-s1-p0: computing" in line,
    )
    assert killed.killed, killed.output[-4000:]
    assert "evaluate-mr-k2-s0-p0: done" in killed.output
    assert len(records(work)["evaluate-cells"]) == 1 and "report" not in records(work)

    resumed = run(work, assets_dir, env, tmp_path / "resumed.log")
    assert resumed.returncode == 0, resumed.output[-4000:]
    out = resumed.output
    assert "evaluate-mr-k2-s0-p0: served from cache" in out
    assert "evaluate-mr-k2-s1-p0: computing" in out and "report: computing" in out
    for name in ("ingest-pool", "ingest-tasks", "embed", "cluster", "ppt-p0"):
        assert f"{name}: served from cache" in out, name
    assert "meta-pretrain-maml-p0: served from cache" in out
    assert results_table(work) == results_table(reference)
    assert leftovers(work) == []
