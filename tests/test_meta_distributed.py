"""Two gloo ranks on CPU give the same prompt as one process (tasks split, gradients summed)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_meta_fixtures import small_config, write_shards

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.toy import ToyPromptModel
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.pretraining.distributed import local_slice, rank_and_world, reduce_sums
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec, PPTSpec


def _toy() -> ToyPromptModel:
    return ToyPromptModel(embed_dim=6, n_classes=3, seed=1, dtype=torch.float32)


def _run_all(shards: Path, out: Path) -> None:
    model = _toy()
    init = model.initial_prompt(3, torch.Generator().manual_seed(0))
    cfg = small_config(meta_steps=4, checkpoint_every=2, val_every=2)
    meta_pretrain(
        shards, MetaSpec.of(cfg), MetaAlgorithm.MAML, model, out / "maml", initial_prompt=init
    )
    ppt_pretrain(shards, PPTSpec.of(cfg), model, out / "ppt", initial_prompt=init)


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world
    )
    try:
        assert rank_and_world() == (rank, world)
        assert local_slice(list(range(5))) == list(range(rank, 5, world))
        _, sums = reduce_sums(torch.zeros(2), [float(rank + 1)])
        assert sums == [3.0]
        _run_all(Path(tmp) / "shards", Path(tmp) / "dist")
        # Both ranks leave together: a rank that tears gloo down while the other is still in
        # its last collective aborts that one at exit.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards")
    _run_all(tmp_path / "shards", tmp_path / "single")
    mp.start_processes(_worker, args=(2, str(tmp_path)), nprocs=2, start_method="spawn", join=True)
    for name in ("maml", "ppt"):
        single, _ = load_prompt(tmp_path / "single" / name)
        double, _ = load_prompt(tmp_path / "dist" / name)
        torch.testing.assert_close(double, single, rtol=0, atol=1e-6)
        assert not (tmp_path / "dist" / f"{name}.ckpt").exists()
