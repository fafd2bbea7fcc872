"""The shared pre-training machinery on the toy model: held-out clusters, the inner-lr
calibration, the class-balanced PPT control, best-prompt selection, clipping, warnings."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_meta_fixtures import small_config, write_shards

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.maml import inner_adapt
from metapt_core.meta.toy import ToyPromptModel
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.pretraining.adaptation import calibrate_inner_lr, collapse_warnings
from metapt_core.pretraining.data import load_pretrain_data
from metapt_core.pretraining.episodes import (
    TRAIN_STREAM,
    hold_out_clusters,
    load_aux_tasks,
    rng_for,
    sample_meta_batch,
)
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec, PPTSpec


def _toy() -> ToyPromptModel:
    return ToyPromptModel(embed_dim=6, n_classes=3, seed=1, dtype=torch.float32)


def _init(model: ToyPromptModel) -> torch.Tensor:
    return model.initial_prompt(3, torch.Generator().manual_seed(0))


def test_held_out_clusters_are_whole_disjoint_and_seeded(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n_shards=5)
    tasks = load_aux_tasks(shards, ["negative", "neutral", "positive"], 0.2, 6, 0)
    train, held = hold_out_clusters(tasks, 2, seed=0)
    assert len(held) == 2 and len(train) == 3
    assert {t.cluster_id for t in train}.isdisjoint({t.cluster_id for t in held})
    assert all(len(t.train_rows) == len(t.labels) and len(t.val_rows) == 0 for t in held)
    again = hold_out_clusters(tasks, 2, seed=0)[1]
    assert [t.cluster_id for t in again] == [t.cluster_id for t in held]
    with pytest.raises(Exception, match="meta.val_clusters"):
        hold_out_clusters(tasks, 5, seed=0)


def test_metapt_never_trains_on_a_held_out_cluster(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n_shards=5)
    model = _toy()
    spec = MetaSpec.of(small_config(meta_steps=3, val_clusters=1, val_every=1))
    result = meta_pretrain(
        shards, spec, MetaAlgorithm.FOMAML, model, tmp_path / "m", initial_prompt=_init(model)
    )
    _, info = load_prompt(tmp_path / "m")
    assert len(info["held_out_clusters"]) == 1
    assert info["held_out_clusters"][0] not in info["tasks"] and len(info["tasks"]) == 4
    for record in result.history[1:]:
        for key in (
            "query_loss",
            "query_loss_0",
            "support_loss",
            "inner_update_ratio",
            "grad_norm",
        ):
            assert math.isfinite(record[key]), key
        assert {"unseen_loss", "unseen_loss_0", "val_loss"} <= set(record)
    # one SGD step at alpha moves theta by ||alpha g||: the logged ratio is that over ||theta||
    assert 0 < result.history[1]["inner_update_ratio"] < 10


def test_calibration_picks_the_largest_gain_on_held_out_clusters_only(tmp_path: Path) -> None:
    model = _toy()
    grid = [0.01, 0.3, 3.0, 300.0]
    cfg = small_config(meta_steps=1, val_clusters=1, inner_lr="auto", inner_lr_grid=grid)
    shards = write_shards(tmp_path / "a", n_shards=4)
    spec = MetaSpec.of(cfg)
    data = load_pretrain_data(shards, spec.meta, spec.pool, model)
    prompt = _init(model)
    got = calibrate_inner_lr(prompt, data.unseen, model, grid, 1)
    # reference: the mean query loss before minus after one SGD step, by hand
    gains = []
    for alpha in grid:
        before = after = rows = 0.0
        for e in data.unseen:
            adapted = inner_adapt(prompt, e.support, model.loss, alpha, 1, create_graph=False)
            with torch.no_grad():
                after += float(model.loss(adapted, e.query)) * len(e.query)
                before += float(model.loss(prompt, e.query)) * len(e.query)
            rows += len(e.query)
        gains.append((before - after) / rows)
    assert [r["gain"] for r in got.sweep] == pytest.approx(gains, rel=1e-6, abs=1e-9)
    assert got.alpha == grid[int(np.argmax(gains))]
    # the run records the same choice, made from its own initial prompt
    result = meta_pretrain(
        shards, spec, MetaAlgorithm.MAML, model, tmp_path / "m", initial_prompt=prompt
    )
    _, info = load_prompt(tmp_path / "m")
    assert info["inner_lr"] == got.alpha and info["calibration"]["auto"] is True
    assert result.metrics["inner_lr"] == got.alpha
    # rewriting a training cluster leaves the choice; rewriting the held-out one moves the sweep
    held = data.held_out_ids[0]
    trained = next(c for c in range(4) if c != held)

    def rewrite(cluster: int, where: Path) -> list[dict]:
        copy = write_shards(where, n_shards=4)
        path = copy / f"shard_{cluster:03d}.parquet"
        frame = pd.read_parquet(path)
        frame["text"] = [f"completely different words {i} here" for i in range(len(frame))]
        frame.to_parquet(path)
        other = load_pretrain_data(copy, spec.meta, spec.pool, model)
        return calibrate_inner_lr(prompt, other.unseen, model, grid, 1).sweep

    assert rewrite(trained, tmp_path / "b") == got.sweep
    assert rewrite(held, tmp_path / "c") != got.sweep


def test_balanced_ppt_trains_on_exactly_metapts_episode_rows(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=1, val_every=0, outer_optimizer="sgd", outer_lr=0.7)
    prompt = _init(model)
    result = ppt_pretrain(
        shards, PPTSpec.of(cfg), model, tmp_path / "b", initial_prompt=prompt, balanced=True
    )
    got, info = load_prompt(tmp_path / "b")
    assert info["made_by"] == "ppt-balanced" and result.metrics["examples_seen"] == 4 * 6
    # reference: SGD at MetaPT's outer lr on the mean loss of MetaPT's step-1 episode rows
    meta = cfg.meta
    tasks = load_aux_tasks(shards, ["negative", "neutral", "positive"], meta.val_fraction, 6, 0)
    rows = sample_meta_batch(tasks, 4, 3, 3, rng_for(0, TRAIN_STREAM, 1))
    texts = [tasks[e.task_index].texts[r] for e in rows for r in (*e.support, *e.query)]
    labels = [int(tasks[e.task_index].labels[r]) for e in rows for r in (*e.support, *e.query)]
    theta = prompt.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.loss(theta, model.encode(texts, labels)), theta)
    assert torch.allclose(got, (prompt - 0.7 * grad).float(), atol=1e-6)


def test_keep_best_keeps_the_lowest_validation_and_clipping_bounds_the_step(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards", n_shards=5)
    model = _toy()
    cfg = small_config(meta_steps=6, val_every=1, val_clusters=1, keep_best=True, outer_lr=0.5)
    spec = MetaSpec.of(cfg)
    result = meta_pretrain(
        shards, spec, MetaAlgorithm.FOMAML, model, tmp_path / "m", initial_prompt=_init(model)
    )
    validated = [h for h in result.history if "unseen_loss" in h]
    kept = [h for h in result.history if h.get("kept")]
    assert len(kept) == 1 and kept[0]["unseen_loss"] == min(h["unseen_loss"] for h in validated)
    assert result.metrics["kept_step"] == kept[0]["step"]

    clip = small_config(meta_steps=1, val_every=0, outer_optimizer="sgd", outer_lr=1.0,
                        clip_grad_norm=1e-3)  # fmt: skip
    start = _init(model)
    clipped = meta_pretrain(
        shards, MetaSpec.of(clip), MetaAlgorithm.FOMAML, model, tmp_path / "c", initial_prompt=start
    )
    moved = float((load_prompt(tmp_path / "c")[0] - start.float()).norm())
    assert clipped.history[-1]["grad_norm"] > 1e-3 and moved == pytest.approx(1e-3, rel=1e-3)


def test_collapse_warnings() -> None:
    chance = math.log(3)
    history = [
        {"step": 0, "val_loss": 0.5},
        {"step": 5, "val_loss": chance + 0.01, "val_top_share": 0.97},
    ]
    found = collapse_warnings(history, 3)
    assert len(found) == 2 and "chance" in found[0] and "collapse" in found[1]
    assert collapse_warnings([{"step": 1, "val_loss": 0.7, "val_top_share": 0.5}], 3) == []
