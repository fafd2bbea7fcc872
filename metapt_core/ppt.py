"""The PPT controls: pre-train the prompt with no meta-learning, matched to MetaPT.

Both controls read the clusters, held-out clusters, validation episodes, initial prompt,
optimiser, learning rate, steps and rows per step that MetaPT of the same seed reads
(:class:`~metapt_core.specs.PPTSpec`, ``ppt.*`` unset), so the only difference left is the
objective:

- **PPT** (Gu et al. 2022): the training rows of all training clusters pooled into one task;
  step ``t`` draws ``B`` rows from the pool with ``rng(seed, POOL, t)``.
- **class-balanced PPT** (``balanced=True``): exactly MetaPT's episode rows (the support and
  query of each task of step ``t``'s meta-batch, drawn with MetaPT's own ``rng(seed, TRAIN,
  t)``; class-balanced unless ``meta.balanced_episodes`` is false), with no inner step. It separates the effect of meta-learning from that of class
  balance, cluster-wise batches and batch size.

Each step minimises the mean cross-entropy of its rows with the (matched) outer optimiser:

    theta <- Opt(theta, grad (1/B) sum_b L(theta; x_b, y_b))
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metapt_core.config import PPTConfig, to_dict
from metapt_core.pretraining import distributed as dist_utils
from metapt_core.pretraining.adaptation import (
    validation_fn,
)
from metapt_core.pretraining.checkpoint import checkpoint_dir
from metapt_core.pretraining.data import (
    PromptObjective,
    pool_format,
)
from metapt_core.pretraining.episodes import (
    POOL_STREAM,
    TRAIN_STREAM,
    AuxTask,
    rng_for,
    sample_meta_batch,
)
from metapt_core.pretraining.loop import (
    PretrainResult,
    Progress,
    finish,
    train_prompt,
)
from metapt_core.pretraining.setup import loop_settings, prepare, prompt_info
from metapt_core.pretraining.start import (
    frozen_backbone,
    make_optimizer,
)
from metapt_core.specs import EpisodeSettings, PPTSpec
from metapt_core.store import ArtifactRef


def ppt_pretrain(
    shards: str | Path | ArtifactRef,
    cfg: PPTSpec,
    model: PromptObjective,
    out_dir: str | Path,
    progress: Progress | None = None,
    resume: bool = True,
    initial_prompt: Tensor | None = None,
    balanced: bool = False,
) -> PretrainResult:
    """Train a prompt on the training clusters' rows, pooled (PPT) or MetaPT's episodes.

    Step ``t`` draws its rows (module docstring) with replacement only if the pool is smaller
    than ``B``; validation, selection, clipping, checkpoints and the output folder are those of
    :func:`metapt_core.pretraining.loop.train_prompt`.

    Args:
        shards: the cluster stage's shards folder (or its reference).
        cfg: what PPT reads (:class:`~metapt_core.specs.PPTSpec`: the matched ``ppt`` section,
            the episode settings it shares with MetaPT, ``prompt``, the pool's format, the
            model's settings).
        model: the frozen prompt model.
        out_dir: the prompt folder to write; checkpoints go to ``<out_dir>.ckpt``.
        progress: ``progress(done, total, message)`` per step.
        resume: continue from a matching checkpoint.
        initial_prompt: a starting ``Tensor[P, d]`` instead of ``init_prompt``.
        balanced: the class-balanced control (MetaPT's episode rows, no inner step).

    Returns:
        :class:`~metapt_core.pretraining.loop.PretrainResult`; ``metrics["examples_seen"]``
        equals MetaPT's under the default budget.
    """
    started = time.perf_counter()
    meta = cfg.meta
    steps, batch_size = cfg.ppt_budget()
    out = Path(out_dir)
    setup = prepare(shards, cfg, model, initial_prompt)
    data = setup.data
    step_fn = _PPTStep.of(model, data.tasks, cfg, batch_size, balanced)
    name = "ppt-balanced" if balanced else "ppt"
    alpha = setup.calibration.alpha
    val_fn = validation_fn(
        data.val, data.unseen, model, alpha, meta.inner_steps, meta.max_step_ratio
    )
    total_steps = steps if not balanced else meta.meta_steps
    warmup = min(meta.warmup_steps, max(total_steps, 1) - 1)
    settings = loop_settings(name, cfg, setup, total_steps, warmup, val_fn is not None)
    ckpt = checkpoint_dir(out)
    matched = cfg.ppt  # PPTSpec.of filled every unset setting with MetaPT's
    lr = _matched_lr(matched)
    with frozen_backbone(model):
        prompt, history = train_prompt(
            setup.initial,
            lambda params: make_optimizer(matched.optimizer or "adam", params, lr),
            step_fn, val_fn, settings, ckpt, progress, resume,
        )  # fmt: skip
    info = prompt_info(
        name, cfg, setup, model, history, alpha,
        steps=settings.total_steps,
        batch_size=batch_size,
        config={"ppt": to_dict(cfg.ppt), "prompt": to_dict(cfg.prompt)},
    )  # fmt: skip
    return finish(out, ckpt, prompt, info, history, started, model)


@dataclass
class _PPTStep:
    """PPT's step for :func:`~metapt_core.pretraining.loop.train_prompt`: the gradient of the
    mean cross-entropy of step ``t``'s rows of the pooled training rows."""

    model: PromptObjective
    tasks: list[AuxTask]
    meta: EpisodeSettings
    batch_size: int  # B, rows per step
    balanced: bool  # MetaPT's episode rows instead of B rows drawn from the pool
    pool: np.ndarray  # int64 [N, 2]: (task, row) of every training row
    pool_batch: Any  # the N pool rows, encoded once
    where: dict[tuple[int, int], int]  # (task, row) -> pool index

    @classmethod
    def of(
        cls,
        model: PromptObjective,
        tasks: list[AuxTask],
        cfg: PPTSpec,
        batch_size: int,
        balanced: bool,
    ) -> _PPTStep:
        """Pool and encode the training rows of ``tasks`` (validation rows and held-out
        clusters are not in ``tasks``)."""
        pool = np.asarray(
            [(ti, int(r)) for ti, task in enumerate(tasks) for r in task.train_rows],
            dtype=np.int64,
        )
        pool_batch = model.encode(
            [tasks[ti].texts[r] for ti, r in pool],
            [int(tasks[ti].labels[r]) for ti, r in pool],
            pool_format(model, cfg.pool),
        )
        where = {(int(ti), int(r)): i for i, (ti, r) in enumerate(pool)}
        return cls(model, tasks, cfg.meta, batch_size, balanced, pool, pool_batch, where)

    def picks(self, step: int) -> list[int]:
        """Pool indices of step ``step``'s rows: ``B`` drawn from ``rng(seed, POOL, t)`` (with
        replacement only if the pool is smaller), or MetaPT's episodes from ``rng(seed, TRAIN,
        t)`` when balanced."""
        meta = self.meta
        if not self.balanced:
            rng = rng_for(meta.seed, POOL_STREAM, step)
            size = self.batch_size
            drawn = rng.choice(len(self.pool), size=size, replace=size > len(self.pool))
            return [int(i) for i in drawn]
        episodes = sample_meta_batch(
            self.tasks,
            meta.meta_batch_size,
            meta.support_size,
            meta.query_size,
            rng_for(meta.seed, TRAIN_STREAM, step),
            balanced=meta.balanced_episodes,
        )
        return [
            self.where[(e.task_index, int(r))] for e in episodes for r in (*e.support, *e.query)
        ]

    def __call__(self, step: int, prompt: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``grad (1/B) sum_b L(theta; x_b, y_b)`` ``Tensor[P, d]`` over every rank's rows, and
        the step's ``loss`` and ``examples``."""
        picks = self.picks(step)
        local = dist_utils.local_slice(picks)
        grad_sum = torch.zeros_like(prompt)
        loss_sum = 0.0
        if local:
            batch = self.pool_batch.select(local)
            theta = prompt.detach().requires_grad_(True)
            # Sum over rows (mean times count), so ranks can all-reduce then divide by B.
            loss = self.model.loss(theta, batch) * len(local)
            (grad,) = torch.autograd.grad(loss, theta)
            grad_sum, loss_sum = grad.detach(), float(loss.detach())
        grad, (loss_total, count) = dist_utils.reduce_sums(grad_sum, [loss_sum, len(local)])
        return grad / count, {"loss": loss_total / count, "examples": float(len(picks))}


def _matched_lr(matched: PPTConfig) -> float:
    """PPT's outer rate, which :meth:`PPTSpec.of` fills from MetaPT's when unset."""
    if matched.lr is None:
        raise ValueError("PPTSpec.ppt.lr is unset: build the spec with PPTSpec.of(config)")
    return float(matched.lr)
