"""What MetaPT and the PPT controls set up alike around their training loop.

Both read the shards' training, validation and held-out clusters
(:func:`~metapt_core.pretraining.data.load_pretrain_data`), start from the same prompt
(:func:`~metapt_core.pretraining.start.starting_prompt`), calibrate the inner rate alpha on the
held-out clusters with the same key, run :func:`~metapt_core.pretraining.loop.train_prompt`
with the same validation, selection, clipping and schedule settings, and record the same
metadata with their prompt. Only the step function and the budget differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from metapt_core.pretraining.adaptation import (
    Calibration,
    calibration_key,
    collapse_warnings,
    resolve_inner_lr,
)
from metapt_core.pretraining.data import (
    PretrainData,
    PromptObjective,
    load_pretrain_data,
    shards_digest,
    shards_path,
)
from metapt_core.pretraining.loop import LoopSettings
from metapt_core.pretraining.start import run_fingerprint, starting_prompt, tensor_hash
from metapt_core.specs import MetaSpec, PPTSpec
from metapt_core.store import ArtifactRef


@dataclass(frozen=True)
class PretrainSetup:
    """The shards folder, its data, the starting ``Tensor[P, d]`` prompt and alpha's
    calibration (alpha as given, or chosen on the held-out clusters)."""

    root: Path
    data: PretrainData
    initial: Tensor
    calibration: Calibration


def prepare(
    shards: str | Path | ArtifactRef,
    cfg: MetaSpec | PPTSpec,
    model: PromptObjective,
    initial_prompt: Tensor | None = None,
) -> PretrainSetup:
    """Load the shards, make the starting prompt and resolve alpha (``meta.inner_lr``: a number,
    or ``auto``: the best adaptation gain over ``meta.inner_lr_grid`` on the held-out clusters,
    cached under a key of the pool, the starting prompt, the shards, the episode settings and
    the model)."""
    meta = cfg.meta
    root = shards_path(shards)
    data = load_pretrain_data(root, meta, cfg.pool, model)
    initial = starting_prompt(model, cfg, initial_prompt)
    key = calibration_key(repr(cfg.pool), tensor_hash(initial), shards_digest(root), meta, model)
    calibration = resolve_inner_lr(
        meta.inner_lr, meta.inner_lr_grid, meta.inner_steps, initial, data.unseen, model, key
    )
    return PretrainSetup(root, data, initial, calibration)


def loop_settings(
    name: str,
    cfg: MetaSpec | PPTSpec,
    setup: PretrainSetup,
    total_steps: int,
    warmup_steps: int,
    validates: bool,
) -> LoopSettings:
    """The loop's settings: ``meta``'s validation cadence (when ``validates``), checkpoints,
    selection (on the held-out clusters' loss when there are any, else the validation
    episodes'), clipping and schedule, and a fingerprint of the run's inputs for resume."""
    meta = cfg.meta
    return LoopSettings(
        total_steps=total_steps,
        val_every=meta.val_every if validates else 0,
        checkpoint_every=meta.checkpoint_every,
        fingerprint=run_fingerprint(name, cfg, setup.root, {"initial": tensor_hash(setup.initial)}),
        name=name,
        keep_best=meta.keep_best,
        select_on="unseen_loss" if setup.data.unseen else "val_loss",
        clip_grad_norm=meta.clip_grad_norm,
        warmup_steps=warmup_steps,
        final_lr_fraction=meta.final_lr_fraction,
    )


def prompt_info(
    name: str,
    cfg: MetaSpec | PPTSpec,
    setup: PretrainSetup,
    model: PromptObjective,
    history: list[dict[str, Any]],
    inner_lr: float,
    **extra: Any,
) -> dict[str, Any]:
    """The metadata saved with a pre-trained prompt (``prompt.json``): who made it, from what,
    the held-out clusters, the inner rule it was validated with and its collapse warnings."""
    meta = cfg.meta
    return {
        "made_by": name,
        "backbone": getattr(model, "name", type(model).__name__),
        "init": cfg.prompt.init.value,
        "seed": meta.seed,
        "held_out_clusters": setup.data.held_out_ids,
        "inner_lr": inner_lr,
        "max_step_ratio": meta.max_step_ratio,
        "calibration": setup.calibration.to_dict(),
        "warnings": collapse_warnings(history, len(cfg.pool.classes)),
        **extra,
    }
