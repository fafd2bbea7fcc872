"""MetaPT meta-pretraining: learn a prompt initialisation over the cluster tasks.

Each outer step draws a meta-batch of tasks (training clusters), a disjoint support and query
batch per task, computes the meta-gradient of MAML, FOMAML or Reptile
(:mod:`metapt_core.meta.maml`) and takes one step of the outer optimiser. The loop (validation,
best-prompt selection, clipping, checkpoints, exact resume) is :mod:`metapt_core.pretraining`,
shared with the PPT controls (:mod:`metapt_core.ppt`).

Example (a notebook, after the cluster stage)::

    from metapt_core.meta.trainer import meta_pretrain
    from metapt_core.specs import MetaSpec
    spec = MetaSpec.of(cfg)  # what MetaPT reads of a PipelineConfig
    result = meta_pretrain(shards_dir, spec, MetaAlgorithm.MAML, model, Path("out/metapt_maml"))
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metapt_core.config import MetaAlgorithm, MetaConfig, to_dict
from metapt_core.meta.curvature import curvature_inner_lr, curvature_lambda
from metapt_core.meta.maml import inner_adapt, meta_gradient_sum
from metapt_core.pretraining import distributed as dist_utils
from metapt_core.pretraining.adaptation import (
    embedding_norm,
    prompt_norm_ratio,
    validation_fn,
)
from metapt_core.pretraining.checkpoint import checkpoint_dir
from metapt_core.pretraining.data import (
    PretrainData,
    PromptObjective,
    grouped_concat,
)
from metapt_core.pretraining.episodes import TRAIN_STREAM, EpisodeRows, rng_for, sample_meta_batch
from metapt_core.pretraining.loop import (
    PretrainResult,
    Progress,
    finish,
    train_prompt,
)
from metapt_core.pretraining.setup import PretrainSetup, loop_settings, prepare, prompt_info
from metapt_core.pretraining.start import (
    frozen_backbone,
    make_optimizer,
)
from metapt_core.specs import MetaSpec
from metapt_core.store import ArtifactRef

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ MetaPT


def meta_pretrain(
    shards: str | Path | ArtifactRef,
    cfg: MetaSpec,
    algorithm: MetaAlgorithm,
    model: PromptObjective,
    out_dir: str | Path,
    progress: Progress | None = None,
    resume: bool = True,
    initial_prompt: Tensor | None = None,
) -> PretrainResult:
    """Meta-learn a prompt initialisation over the shards with MAML, FOMAML or Reptile.

    Outer step ``t``: draw ``meta.meta_batch_size`` tasks and their disjoint support/query
    batches from ``rng(meta.seed, t)``, compute the meta-gradient ``g`` of ``algorithm``
    (:func:`metapt_core.meta.maml.meta_gradient`), and apply ``theta <- Opt(theta, g)`` with
    ``meta.outer_optimizer`` at ``meta.outer_lr`` (warmed up and decayed as
    :func:`~metapt_core.pretraining.loop.lr_factor` says). Every ``meta.val_every`` steps the
    prompt is adapted on held-out validation episodes and scored on their queries.

    The inner rate: ``alpha_0`` as given or calibrated on the held-out clusters, then, with
    ``meta.curvature_scale`` c > 0, ``alpha_t = min(alpha_0, c / lambda_max)`` re-estimated at
    step 1 and every ``meta.val_every`` steps on that step's support batches
    (:mod:`metapt_core.meta.curvature`); each inner step is capped at ``meta.max_step_ratio``
    times the prompt's norm (:func:`metapt_core.inner_sgd.step_size`).

    Args:
        shards: the cluster stage's shards folder (or its reference).
        cfg: what MetaPT reads (:class:`~metapt_core.specs.MetaSpec`: ``meta``, ``prompt``, the
            pool's format, the model's settings).
        algorithm: the meta-learner.
        model: the frozen prompt model (never modified).
        out_dir: the prompt folder to write (atomically); checkpoints go to ``<out_dir>.ckpt``.
        progress: ``progress(done, total, message)`` per step.
        resume: continue from a matching checkpoint.
        initial_prompt: a starting ``Tensor[P, d]`` instead of ``init_prompt`` (tests, toys).

    Returns:
        :class:`PretrainResult`; ``history`` has per step ``query_loss`` (after the inner step:
        MAML's objective), ``query_loss_0`` (before), ``support_loss`` (before), ``inner_lr``,
        ``inner_update_ratio`` (``||theta' - theta|| / ||theta||``), ``grad_norm``, ``examples``;
        ``lambda_max`` where the curvature was estimated and ``support_loss_after`` (the support
        loss at the adapted prompt) at the same steps (every ``val_every``, from step 1);
        ``val_*`` / ``unseen_*`` at validation steps.
    """
    started = time.perf_counter()
    algorithm = MetaAlgorithm(algorithm)
    meta = cfg.meta
    out = Path(out_dir)
    setup = prepare(shards, cfg, model, initial_prompt)
    data = setup.data
    meta_step = _MetaStep(
        meta, algorithm, model, data, setup.calibration.alpha, embedding_norm(model)
    )
    # Sized at the initial prompt before anything is validated, so the step-0 validation (a
    # keep_best candidate) scores the rule that training starts with.
    meta_step.size_first_rate(setup.initial)
    val_fn = validation_fn(
        data.val, data.unseen, model, lambda: meta_step.alpha, meta.inner_steps, meta.max_step_ratio
    )
    settings = loop_settings(
        f"metapt-{algorithm.value}", cfg, setup, meta.meta_steps, meta.warmup_steps,
        val_fn is not None,
    )  # fmt: skip
    ckpt = checkpoint_dir(out)
    _log_start(settings.name, setup, meta, model)
    with frozen_backbone(model):
        prompt, history = train_prompt(
            setup.initial,
            lambda params: make_optimizer(meta.outer_optimizer, params, meta.outer_lr),
            meta_step, val_fn, settings, ckpt, progress, resume, meta_step.restore,
        )  # fmt: skip
    info = prompt_info(
        settings.name, cfg, setup, model, history, _kept_inner_lr(history, meta_step.alpha),
        algorithm=algorithm.value,
        tasks=[t.cluster_id for t in data.tasks],
        config={"meta": to_dict(meta), "prompt": to_dict(cfg.prompt)},
    )  # fmt: skip
    return finish(out, ckpt, prompt, info, history, started, model)


@dataclass
class _MetaStep:
    """MetaPT's outer step for :func:`~metapt_core.pretraining.loop.train_prompt`, and the inner
    rate ``alpha`` it carries from step to step.

    ``alpha`` starts at ``alpha_0`` (``base_alpha``); with ``meta.curvature_scale`` c > 0 it is
    re-sized to ``min(alpha_0, c / lambda_max)`` at step 1 and every ``recheck_every`` steps.
    """

    meta: MetaConfig
    algorithm: MetaAlgorithm
    model: PromptObjective
    data: PretrainData
    base_alpha: float  # alpha_0: as configured, or calibrated on the held-out clusters
    reference_norm: float  # the embedding matrix's norm, for prompt_norm_ratio
    alpha: float = field(init=False)
    # lambda_max estimated before training, by step: step 1 reuses it (same prompt, supports)
    first_lambda: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.alpha = self.base_alpha

    @property
    def recheck_every(self) -> int:
        """Steps between curvature estimates (and support-loss diagnostics)."""
        return self.meta.val_every or self.meta.meta_steps

    def rows(self, step: int) -> list[EpisodeRows]:
        """Step ``step``'s meta-batch of support/query rows, drawn from ``rng(seed, TRAIN, t)``."""
        meta = self.meta
        return sample_meta_batch(
            self.data.tasks,
            meta.meta_batch_size,
            meta.support_size,
            meta.query_size,
            rng_for(meta.seed, TRAIN_STREAM, step),
            balanced=meta.balanced_episodes,
        )

    def curvature(self, step: int, prompt: Tensor, rows: list[EpisodeRows]) -> float:
        """lambda_max of step ``step``'s first supports at ``prompt`` (every rank estimates
        on the same supports, so every rank gets the same alpha)."""
        meta = self.meta
        supports = [e.support for e in self.data.encoded.episodes(rows[: meta.curvature_episodes])]
        return curvature_lambda(
            prompt, supports, self.model.loss, meta.curvature_iterations,
            (meta.seed, TRAIN_STREAM, step),
        )  # fmt: skip

    def size_first_rate(self, initial: Tensor) -> None:
        """Size alpha to the curvature at the initial prompt on step 1's supports (c > 0 only)."""
        if self.meta.curvature_scale > 0:
            self.first_lambda[1] = self.curvature(1, initial, self.rows(1))
            self.alpha = curvature_inner_lr(
                self.base_alpha, self.first_lambda[1], self.meta.curvature_scale
            )

    def restore(self, history: list[dict[str, Any]]) -> None:
        """Take back the inner rate of a resumed run: the last ``inner_lr`` its history holds."""
        for record in history:
            if "inner_lr" in record:
                self.alpha = float(record["inner_lr"])

    def __call__(self, step: int, prompt: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The mean meta-gradient ``Tensor[P, d]`` of step ``step`` and the step's record."""
        meta = self.meta
        rows = self.rows(step)
        checks = (step - 1) % self.recheck_every == 0
        extra: dict[str, float] = {}
        if meta.curvature_scale > 0 and checks:
            lam = self.first_lambda.pop(step, None)
            if lam is None:
                lam = self.curvature(step, prompt, rows)
            self.alpha = curvature_inner_lr(self.base_alpha, lam, meta.curvature_scale)
            extra["lambda_max"] = lam
        alpha = self.alpha
        episodes = self.data.encoded.episodes(dist_utils.local_slice(rows))
        concat = grouped_concat(self.model, episodes)
        total = meta_gradient_sum(
            prompt,
            episodes,
            self.model.loss,
            self.algorithm,
            alpha,
            meta.inner_steps,
            meta.reptile_step,
            concat=concat if meta.group_tasks else None,
            max_step_ratio=meta.max_step_ratio,
        )
        before = query_loss_before(prompt, episodes, self.model, concat)
        if checks:  # a diagnostic pass, at the curvature steps only
            extra["support_loss_after"] = self.mean_support_after(prompt, episodes, alpha)
        grad, sums = dist_utils.reduce_sums(
            total.grad,
            [total.query_loss, total.support_loss, before, total.inner_shift, total.tasks],
        )
        return grad / sums[-1], self.record(prompt, len(rows), alpha, sums, extra)

    def mean_support_after(self, prompt: Tensor, episodes: list[Any], alpha: float) -> float:
        """The support loss at the adapted prompt, averaged over the tasks of every rank."""
        local_after = support_loss_after(prompt, episodes, self.model, alpha, self.meta)
        _, (after_sum, tasks_sum) = dist_utils.reduce_sums(
            torch.zeros(1), [local_after, float(len(episodes))]
        )
        return after_sum / max(tasks_sum, 1.0)

    def record(
        self,
        prompt: Tensor,
        n_tasks: int,
        alpha: float,
        sums: list[float],
        extra: dict[str, float],
    ) -> dict[str, float]:
        """The step's record from the summed ``(query, support, query before, inner shift,
        tasks)`` over every rank: their means per task, and ``||theta' - theta|| / ||theta||``."""
        query_sum, support_sum, before_sum, shift_sum, count = sums
        theta_norm = float(prompt.detach().float().norm())
        episode_rows = self.meta.support_size + self.meta.query_size
        record = {
            "query_loss": query_sum / count,
            "query_loss_0": before_sum / count,
            "support_loss": support_sum / count,
            "inner_update_ratio": shift_sum / count / max(theta_norm, 1e-12),
            "inner_lr": alpha,
            "examples": float(n_tasks * episode_rows),
            **extra,
        }
        ratio = prompt_norm_ratio(prompt, self.reference_norm)
        if math.isfinite(ratio):  # models without an embedding matrix (toys) have none
            record["prompt_norm_ratio"] = ratio
        return record


def _kept_inner_lr(history: list[dict[str, Any]], current: float) -> float:
    """The inner rule the kept prompt was validated with (``current``, the last one, unless
    keep_best chose an earlier step): what the meta-objective check and the inner protocol adapt
    it with."""
    kept = next((h for h in history if h.get("kept")), None)
    return float(kept.get("inner_lr", current)) if kept else current


def _log_start(name: str, setup: PretrainSetup, meta: MetaConfig, model: PromptObjective) -> None:
    """Log what the run trains on: clusters, validation episodes, alpha, steps and device."""
    data = setup.data
    log.info(
        "%s: %d training clusters, %d held out, %d + %d validation episodes, alpha %g, "
        "%d steps on %s",
        name,
        len(data.tasks),
        len(data.held_out),
        len(data.val),
        len(data.unseen),
        setup.calibration.alpha,
        meta.meta_steps,
        model.device,
    )


def support_loss_after(
    prompt: Tensor, episodes: list[Any], model: PromptObjective, alpha: float, meta: Any
) -> float:
    """Sum over episodes of the support loss at the adapted prompt, ``L_S(theta')`` with
    ``theta'`` the inner rule (``alpha``, ``meta.inner_steps``, ``meta.max_step_ratio``) on that
    support: whether the inner step lowered the loss it stepped on."""
    total = 0.0
    for episode in episodes:
        adapted = inner_adapt(
            prompt.detach(), episode.support, model.loss, alpha, meta.inner_steps, False,
            meta.max_step_ratio,
        )  # fmt: skip
        with torch.no_grad():
            total += float(model.loss(adapted.detach(), episode.support))
    return total


@torch.no_grad()
def query_loss_before(
    prompt: Tensor, episodes: list[Any], model: PromptObjective, concat: Any
) -> float:
    """Sum over episodes of the query loss at ``theta`` (before adaptation): one grouped pass
    when the batches concatenate (rows grouped by task, equal sizes), else one per episode."""
    if not episodes:
        return 0.0
    sizes = {len(e.query) for e in episodes}
    if concat is not None and len(sizes) == 1:
        joined = concat([e.query for e in episodes])
        copies = prompt.detach().unsqueeze(0).repeat(len(episodes), 1, 1)
        return float(model.loss(copies, joined)) * len(episodes)
    return float(sum(float(model.loss(prompt.detach(), e.query)) for e in episodes))
