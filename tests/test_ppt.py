"""PPT baseline: one mixed task, matched budget of examples seen, shared loop machinery."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_meta_fixtures import small_config, write_shards

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.toy import ToyPromptModel
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.pretraining.checkpoint import checkpoint_dir
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec, PPTSpec


def _toy() -> ToyPromptModel:
    return ToyPromptModel(embed_dim=6, n_classes=3, seed=1, dtype=torch.float32)


def _init(model: ToyPromptModel) -> torch.Tensor:
    return model.initial_prompt(3, torch.Generator().manual_seed(0))


def test_ppt_matches_metapt_examples_seen(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=5)
    assert cfg.ppt_budget() == (5, 4 * 6)
    meta = meta_pretrain(
        shards,
        MetaSpec.of(cfg),
        MetaAlgorithm.FOMAML,
        model,
        tmp_path / "m",
        initial_prompt=_init(model),
    )
    ppt = ppt_pretrain(shards, PPTSpec.of(cfg), model, tmp_path / "p", initial_prompt=_init(model))
    assert ppt.metrics["examples_seen"] == meta.metrics["examples_seen"] == 5 * 24
    history = json.loads((tmp_path / "p" / "history.json").read_text())
    assert [h["step"] for h in history] == list(range(6))
    assert all(h["examples"] == 24 for h in history[1:])
    prompt, info = load_prompt(tmp_path / "p")
    assert info["made_by"] == "ppt" and not torch.equal(prompt, _init(model))
    # Same validation episodes as MetaPT: the initial prompt scores the same at step 0.
    assert history[0]["val_loss_0"] == pytest.approx(meta.history[0]["val_loss_0"], rel=1e-6)


def test_ppt_loss_decreases_on_the_pool(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", rows_per_shard=40)
    model = _toy()
    cfg = small_config(meta_steps=40, val_every=0)
    cfg.ppt.lr = 0.1
    result = ppt_pretrain(
        shards, PPTSpec.of(cfg), model, tmp_path / "p", initial_prompt=_init(model)
    )
    losses = [h["loss"] for h in result.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_ppt_resume_is_exact(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=6, checkpoint_every=2)
    cfg.ppt.steps, cfg.ppt.batch_size = 6, 10
    ppt_pretrain(shards, PPTSpec.of(cfg), model, tmp_path / "a", initial_prompt=_init(model))

    def crash(done: int, total: int, message: str) -> None:
        if done == 3:
            raise RuntimeError("simulated failure")

    with pytest.raises(RuntimeError):
        ppt_pretrain(
            shards,
            PPTSpec.of(cfg),
            model,
            tmp_path / "b",
            progress=crash,
            initial_prompt=_init(model),
        )
    assert (checkpoint_dir(tmp_path / "b") / "last.pt").is_file()
    result = ppt_pretrain(
        shards, PPTSpec.of(cfg), model, tmp_path / "b", initial_prompt=_init(model)
    )
    assert result.metrics["examples_seen"] == 60
    assert torch.equal(load_prompt(tmp_path / "a")[0], load_prompt(tmp_path / "b")[0])
