"""MetaPT meta-pretraining: learn a prompt initialisation over the cluster tasks.

Each outer step draws a meta-batch of tasks (training clusters), a disjoint support and query
batch per task, computes the meta-gradient of MAML, FOMAML or Reptile
(:mod:`metapt_core.meta.maml`) and takes one step of the outer optimiser. The loop (validation,
best-prompt selection, clipping, checkpoints, exact resume) is :mod:`metapt_core.pretraining`,
shared with the PPT controls (:mod:`metapt_core.ppt`).

Example (a notebook, after the cluster stage)::

    from metapt_core.meta import meta_pretrain
    result = meta_pretrain(shards_dir, cfg, MetaAlgorithm.MAML, model, Path("out/metapt_maml"))
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metapt_core.config import MetaAlgorithm, PipelineConfig, to_dict
from metapt_core.meta import distributed as dist_utils
from metapt_core.meta.checkpoint import checkpoint_dir
from metapt_core.meta.curvature import curvature_inner_lr, curvature_lambda
from metapt_core.meta.episodes import TRAIN_STREAM, rng_for, sample_meta_batch
from metapt_core.meta.maml import inner_adapt, meta_gradient_sum
from metapt_core.pretraining.adaptation import (
    embedding_norm,
    prompt_norm_ratio,
    validation_fn,
)
from metapt_core.pretraining.data import (
    PromptObjective,
    grouped_concat,
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
from metapt_core.specs import MetaSpec
from metapt_core.store import ArtifactRef

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ MetaPT


def meta_pretrain(
    shards: str | Path | ArtifactRef,
    cfg: MetaSpec | PipelineConfig,
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
            pool's format, the model's settings), or a whole config to take it from.
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
    cfg = MetaSpec.of(cfg)
    meta = cfg.meta
    out = Path(out_dir)
    episode_rows = meta.support_size + meta.query_size
    setup = prepare(shards, cfg, model, initial_prompt)
    data, initial, calibration = setup.data, setup.initial, setup.calibration
    tasks, encoded = data.tasks, data.encoded
    reference_norm = embedding_norm(model)
    recheck_every = meta.val_every or meta.meta_steps
    rate = {"alpha": calibration.alpha}  # the current inner rate, re-sized to the curvature

    def curvature_at(step: int, prompt: Tensor, rows: list[Any]) -> float:
        """lambda_max of step ``step``'s first supports at ``prompt`` (every rank estimates
        on the same supports, so every rank gets the same alpha)."""
        supports = [e.support for e in encoded.episodes(rows[: meta.curvature_episodes])]
        return curvature_lambda(
            prompt, supports, model.loss, meta.curvature_iterations,
            (meta.seed, TRAIN_STREAM, step),
        )  # fmt: skip

    def rows_of(step: int) -> list[Any]:
        return sample_meta_batch(
            tasks,
            meta.meta_batch_size,
            meta.support_size,
            meta.query_size,
            rng_for(meta.seed, TRAIN_STREAM, step),
            balanced=meta.balanced_episodes,
        )

    # The rate is sized at the initial prompt before anything is validated, so the step-0
    # validation (a keep_best candidate) scores the rule that training starts with; step 1
    # reuses this estimate (same prompt, same supports).
    first_lambda: dict[int, float] = {}
    if meta.curvature_scale > 0:
        first_lambda[1] = curvature_at(1, initial, rows_of(1))
        rate["alpha"] = curvature_inner_lr(calibration.alpha, first_lambda[1], meta.curvature_scale)

    def restore(history: list[dict[str, Any]]) -> None:
        for record in history:
            if "inner_lr" in record:
                rate["alpha"] = float(record["inner_lr"])

    def step_fn(step: int, prompt: Tensor) -> tuple[Tensor, dict[str, float]]:
        rows = rows_of(step)
        extra: dict[str, float] = {}
        if meta.curvature_scale > 0 and (step - 1) % recheck_every == 0:
            lam = first_lambda.pop(step, None)
            if lam is None:
                lam = curvature_at(step, prompt, rows)
            rate["alpha"] = curvature_inner_lr(calibration.alpha, lam, meta.curvature_scale)
            extra["lambda_max"] = lam
        alpha = rate["alpha"]
        episodes = encoded.episodes(dist_utils.local_slice(rows))
        concat = grouped_concat(model, episodes)
        total = meta_gradient_sum(
            prompt,
            episodes,
            model.loss,
            algorithm,
            alpha,
            meta.inner_steps,
            meta.reptile_step,
            concat=concat if meta.group_tasks else None,
            max_step_ratio=meta.max_step_ratio,
        )
        before = query_loss_before(prompt, episodes, model, concat)
        if (step - 1) % recheck_every == 0:  # a diagnostic pass, at the curvature steps only
            local_after = support_loss_after(prompt, episodes, model, alpha, meta)
            _, (after_sum, tasks_sum) = dist_utils.reduce_sums(
                torch.zeros(1), [local_after, float(len(episodes))]
            )
            extra["support_loss_after"] = after_sum / max(tasks_sum, 1.0)
        grad, (query_sum, support_sum, before_sum, shift_sum, count) = dist_utils.reduce_sums(
            total.grad,
            [total.query_loss, total.support_loss, before, total.inner_shift, total.tasks],
        )
        theta_norm = float(prompt.detach().float().norm())
        record = {
            "query_loss": query_sum / count,
            "query_loss_0": before_sum / count,
            "support_loss": support_sum / count,
            "inner_update_ratio": shift_sum / count / max(theta_norm, 1e-12),
            "inner_lr": alpha,
            "examples": float(len(rows) * episode_rows),
            **extra,
        }
        ratio = prompt_norm_ratio(prompt, reference_norm)
        if math.isfinite(ratio):  # models without an embedding matrix (toys) have none
            record["prompt_norm_ratio"] = ratio
        return grad / count, record

    val_fn = validation_fn(
        data.val, data.unseen, model, lambda: rate["alpha"], meta.inner_steps, meta.max_step_ratio
    )
    settings = loop_settings(
        f"metapt-{algorithm.value}", cfg, setup, meta.meta_steps, meta.warmup_steps,
        val_fn is not None,
    )  # fmt: skip
    ckpt = checkpoint_dir(out)
    log.info(
        "%s: %d training clusters, %d held out, %d + %d validation episodes, alpha %g, "
        "%d steps on %s",
        settings.name,
        len(tasks),
        len(data.held_out),
        len(data.val),
        len(data.unseen),
        calibration.alpha,
        meta.meta_steps,
        model.device,
    )
    with frozen_backbone(model):
        prompt, history = train_prompt(
            initial,
            lambda params: make_optimizer(meta.outer_optimizer, params, meta.outer_lr),
            step_fn,
            val_fn,
            settings,
            ckpt,
            progress,
            resume,
            restore,
        )
    # The inner rule the kept prompt was validated with (the last one unless keep_best chose an
    # earlier step): what the meta-objective check and the inner protocol adapt it with.
    kept = next((h for h in history if h.get("kept")), None)
    final_alpha = float(kept.get("inner_lr", rate["alpha"])) if kept else rate["alpha"]
    info = prompt_info(
        settings.name, cfg, setup, model, history, final_alpha,
        algorithm=algorithm.value,
        tasks=[t.cluster_id for t in tasks],
        config={"meta": to_dict(meta), "prompt": to_dict(cfg.prompt)},
    )  # fmt: skip
    return finish(out, ckpt, prompt, info, history, started, model)


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
