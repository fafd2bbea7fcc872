"""The engines beyond one process, through the real pipeline (``metapt run --profile smoke``):
pre-training on torchrun ranks (``distributed.nproc_per_node``) with a rank killed midway, and
the evaluation grid on a Dask cluster of worker processes (``grid.runner: dask``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _ranks import killing_rank_one
from safetensors.torch import load_file
from smoke_runs import isolated_env, leftovers, results_table, run

pytestmark = pytest.mark.slow

UPSTREAM = ("ingest-pool", "ingest-tasks", "embed", "cluster")
PRETRAINED = ("ppt", "meta-pretrain")


def copy_stages(reference: Path, work: Path, stages: tuple[str, ...]) -> None:
    for stage in stages:
        shutil.copytree(reference / "artifacts" / stage, work / "artifacts" / stage)


def test_pretraining_on_two_torchrun_ranks_survives_a_killed_rank(
    smoke_reference: Path, tmp_path: Path, assets_dir: Path
) -> None:
    """``distributed.nproc_per_node=2``: PPT and MetaPT run on two gloo ranks launched by the
    pipeline; rank 1 of MetaPT is SIGKILLed after its first checkpoint, the group is relaunched
    and resumes; the prompts are a single-process run's up to summation order. Both runs are in
    float32 with a small plain-SGD outer step: two ranks sum the meta-gradient in another order,
    and Adam's first steps are about ``lr * sign(g)``, so a component whose gradient is at
    rounding level may move by ``lr`` either way (measured: 0.04 on a few of 2,304 components);
    and where the smoke profile's MAML gradient grows (1.8, 18, 262 over its three steps at an
    SGD lr of 0.03) the rounding grows with it (0.2% of the prompt at the end). At lr 0.003 the
    run stays smooth and the two agree to rounding."""
    fp32 = ("--set", "backbone.autocast_bf16=false", "--set", "meta.outer_optimizer=sgd",
            "--set", "meta.outer_lr=0.003")  # fmt: skip
    works = {}
    for name in ("one", "two"):
        works[name] = tmp_path / name / "work"
        copy_stages(smoke_reference, works[name], UPSTREAM)
    one = run(works["one"], assets_dir, isolated_env(tmp_path / "one" / "home"),
              tmp_path / "one.log", *fp32)  # fmt: skip
    assert one.returncode == 0, one.output[-4000:]
    work = works["two"]
    checkpoint = work / "artifacts" / "meta-pretrain"
    with killing_rank_one(
        lambda: bool(list(checkpoint.glob("*.partial/out.ckpt/last.pt"))),
        lambda cmd: "metapt_core.meta" in cmd and "--algorithm" in cmd,
    ) as killed:
        result = run(work, assets_dir, isolated_env(tmp_path / "two" / "home"),
                     tmp_path / "ranks.log", *fp32, "--set", "distributed.nproc_per_node=2")  # fmt: skip
    assert result.returncode == 0, result.output[-4000:]
    out = result.output
    assert killed, "rank 1 of meta-pretrain was never seen with a checkpoint"
    assert "ppt-p0: computing" in out and "meta-pretrain-maml-p0: computing" in out
    assert "relaunching (2 of 2)" in out and "resuming from step" in out
    for stage in PRETRAINED:
        (ours,) = (work / "artifacts" / stage).glob("*/out/prompt.safetensors")
        (theirs,) = (works["one"] / "artifacts" / stage).glob("*/out/prompt.safetensors")
        torch.testing.assert_close(load_file(ours)["prompt"], load_file(theirs)["prompt"],
                                   rtol=1e-4, atol=1e-5, msg=stage)  # fmt: skip
    assert leftovers(work) == []


def test_grid_on_a_dask_cluster_of_processes(
    smoke_reference: Path, tmp_path: Path, assets_dir: Path
) -> None:
    """``grid.runner=dask``: the evaluation groups run in two Dask worker processes (a local
    cluster that the run starts), each loading the backbone itself; the results are the thread
    runner's, row for row."""
    work = tmp_path / "work"
    copy_stages(smoke_reference, work, UPSTREAM + PRETRAINED)
    result = run(work, assets_dir, isolated_env(tmp_path / "home"), tmp_path / "dask.log",
                 "--set", "grid.runner=dask", "--set", "grid.max_workers=2")  # fmt: skip
    assert result.returncode == 0, result.output[-4000:]
    out = result.output
    assert "meta-pretrain-maml-p0: served from cache" in out
    assert "evaluate-mr-k2-s0-p0: computing" in out and "evaluate-mr-k2-s1-p0: computing" in out
    # only a task running inside a Dask worker logs this line (``distributed.get_worker``)
    on_workers = [line for line in out.splitlines() if "dask worker pid " in line]
    assert len(on_workers) == 2, out[-3000:]  # both groups
    assert results_table(work) == results_table(smoke_reference)
    assert leftovers(work) == []
