"""Interruption and resume with real processes: SIGKILL during meta-pretraining and during the grid.

The rerun serves every finished stage and grid group from the store, continues meta-pretraining
from its last checkpoint, and ends with the same results (and the same meta-learned prompt) as
an uninterrupted run on CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from smoke_runs import isolated_env, leftovers, records, results_table, run

pytestmark = pytest.mark.slow

UPSTREAM = ("ingest-pool", "ingest-tasks", "embed", "cluster", "ppt", "meta-pretrain")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """The work dir of one uninterrupted smoke run."""
    root = tmp_path_factory.mktemp("reference")
    work = root / "work"
    env = isolated_env(root / "home")
    result = run(work, assets_dir, env, root / "run.log")
    assert result.returncode == 0, result.output[-4000:]
    print(f"uninterrupted smoke run: {result.seconds:.1f} s")
    return work


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


def _kill_rank_one_of_meta(work: Path, stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL rank 1 of the meta-pretrain torchrun once a checkpoint of it is on disk."""
    while not stop.is_set() and not killed:
        if list((work / "artifacts" / "meta-pretrain").glob("*.partial/out.ckpt/last.pt")):
            for proc in psutil.process_iter(["cmdline"]):
                try:
                    cmd = proc.info["cmdline"] or []
                    if (
                        "metapt_core.meta" in cmd
                        and "--algorithm" in cmd
                        and proc.environ().get("RANK") == "1"
                    ):
                        os.kill(proc.pid, signal.SIGKILL)
                        killed.append(proc.pid)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
        time.sleep(0.02)


def test_pretraining_on_two_torchrun_ranks_survives_a_killed_rank(
    reference: Path, tmp_path: Path, assets_dir: Path
) -> None:
    """``distributed.nproc_per_node=2``: PPT and MetaPT run on two gloo ranks launched by the
    pipeline; rank 1 of MetaPT is SIGKILLed after its first checkpoint, the group is relaunched
    and resumes; the prompts are a single-process run's up to summation order. Both runs are in
    float32: under bf16 autocast a grouped pass and two half passes round differently, and Adam
    turns a near-zero gradient's sign into a full ``lr`` step."""
    fp32 = ("--set", "backbone.autocast_bf16=false")
    works = {}
    for name in ("one", "two"):
        works[name] = tmp_path / name / "work"
        for stage in ("ingest-pool", "ingest-tasks", "embed", "cluster"):
            shutil.copytree(reference / "artifacts" / stage, works[name] / "artifacts" / stage)
    one = run(works["one"], assets_dir, isolated_env(tmp_path / "one" / "home"),
              tmp_path / "one.log", *fp32)  # fmt: skip
    assert one.returncode == 0, one.output[-4000:]
    work = works["two"]
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_kill_rank_one_of_meta, args=(work, stop, killed))
    watcher.start()
    try:
        result = run(work, assets_dir, isolated_env(tmp_path / "two" / "home"),
                     tmp_path / "ranks.log", *fp32, "--set", "distributed.nproc_per_node=2")  # fmt: skip
    finally:
        stop.set()
        watcher.join()
    assert result.returncode == 0, result.output[-4000:]
    out = result.output
    assert killed, "rank 1 of meta-pretrain was never seen with a checkpoint"
    assert "ppt-p0: computing" in out and "meta-pretrain-maml-p0: computing" in out
    assert "relaunching (2 of 2)" in out and "resuming from step" in out
    for stage in ("ppt", "meta-pretrain"):
        (ours,) = (work / "artifacts" / stage).glob("*/out/prompt.safetensors")
        (theirs,) = (works["one"] / "artifacts" / stage).glob("*/out/prompt.safetensors")
        torch.testing.assert_close(load_file(ours)["prompt"], load_file(theirs)["prompt"],
                                   rtol=0, atol=1e-5, msg=stage)  # fmt: skip
    assert leftovers(work) == []
