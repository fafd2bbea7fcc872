"""PPT baseline: pre-train the prompt on the whole pool as one mixed task.

The control for MetaPT: the same shards' training rows pooled together (no clusters, no
meta-learning), the same backbone, initialisation and validation episodes, and the same budget
of examples seen (``cfg.ppt_budget()``: by default ``meta.meta_steps`` steps of
``meta.meta_batch_size * (support_size + query_size)`` rows). Each step minimises the mean
cross-entropy of a batch with Adam at ``ppt.lr``:

    theta <- Adam(theta, grad (1/B) sum_b L(theta; x_b, y_b))
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from metapt_core.config import PipelineConfig, to_dict
from metapt_core.meta import distributed as dist_utils
from metapt_core.meta.checkpoint import checkpoint_dir
from metapt_core.meta.episodes import POOL_STREAM, load_tasks, rng_for, validation_episodes
from metapt_core.meta.trainer import (
    EncodedTasks,
    LoopSettings,
    PretrainResult,
    Progress,
    PromptObjective,
    evaluate_adapted,
    finish,
    frozen_backbone,
    make_optimizer,
    run_fingerprint,
    shards_path,
    starting_prompt,
    task_format,
    tensor_hash,
    train_prompt,
)
from metapt_core.specs import PPTSpec
from metapt_core.store import ArtifactRef


def ppt_pretrain(
    shards: str | Path | ArtifactRef,
    cfg: PPTSpec | PipelineConfig,
    model: PromptObjective,
    out_dir: str | Path,
    progress: Progress | None = None,
    resume: bool = True,
    initial_prompt: Tensor | None = None,
) -> PretrainResult:
    """Train a prompt on all shards' training rows pooled into one task.

    Step ``t`` draws ``B`` rows without replacement from the pool with ``rng(meta.seed, t)``
    (with replacement only if the pool is smaller than ``B``); validation, checkpoints and the
    output folder are those of :func:`metapt_core.meta.trainer.train_prompt`.

    Args:
        shards: the cluster stage's shards folder (or its reference).
        cfg: what PPT reads (:class:`~metapt_core.specs.PPTSpec`: ``ppt``, the episode settings
            it shares with MetaPT, ``prompt``, the pool's format, the model's settings), or a
            whole config to take it from; ``(steps, B) = cfg.ppt_budget()``.
        model: the frozen prompt model.
        out_dir: the prompt folder to write; checkpoints go to ``<out_dir>.ckpt``.
        progress: ``progress(done, total, message)`` per step.
        resume: continue from a matching checkpoint.
        initial_prompt: a starting ``Tensor[P, d]`` instead of ``init_prompt``.

    Returns:
        :class:`~metapt_core.meta.trainer.PretrainResult`; ``metrics["examples_seen"]`` equals
        MetaPT's under the default budget.
    """
    started = time.perf_counter()
    cfg = PPTSpec.of(cfg)
    meta = cfg.meta
    steps, batch_size = cfg.ppt_budget()
    out = Path(out_dir)
    root = shards_path(shards)
    tasks = load_tasks(
        root, cfg.pool.classes, meta.val_fraction, meta.support_size + meta.query_size, meta.seed
    )
    # The pool: (task, row) of every training row, validation rows kept out as in MetaPT.
    pool = np.asarray(
        [(ti, int(r)) for ti, task in enumerate(tasks) for r in task.train_rows], dtype=np.int64
    )
    val_rows = validation_episodes(
        tasks, meta.val_episodes, meta.support_size, meta.query_size, meta.seed
    )
    val_set = EncodedTasks(model, tasks, task_format(cfg)).episodes(val_rows)
    # Tokenised once per stage: each step selects its rows.
    pool_batch = model.encode(
        [tasks[ti].texts[r] for ti, r in pool],
        [int(tasks[ti].labels[r]) for ti, r in pool],
        task_format(cfg),
    )

    def step_fn(step: int, prompt: Tensor) -> tuple[Tensor, dict[str, float]]:
        rng = rng_for(meta.seed, POOL_STREAM, step)
        picks = rng.choice(len(pool), size=batch_size, replace=batch_size > len(pool))
        local = dist_utils.local_slice(list(picks))
        grad_sum = torch.zeros_like(prompt)
        loss_sum = 0.0
        if local:
            batch = pool_batch.select([int(i) for i in local])
            theta = prompt.detach().requires_grad_(True)
            # Sum over rows (mean times count), so ranks can all-reduce then divide by B.
            loss = model.loss(theta, batch) * len(local)
            (grad,) = torch.autograd.grad(loss, theta)
            grad_sum, loss_sum = grad.detach(), float(loss.detach())
        grad, (loss_total, count) = dist_utils.reduce_sums(grad_sum, [loss_sum, len(local)])
        return grad / count, {"loss": loss_total / count, "examples": float(batch_size)}

    def val_fn(prompt: Tensor) -> dict[str, float]:
        return evaluate_adapted(prompt, val_set, model, meta.inner_lr, meta.inner_steps)

    initial = starting_prompt(model, cfg, initial_prompt)
    settings = LoopSettings(
        total_steps=steps,
        val_every=meta.val_every if val_set else 0,
        checkpoint_every=meta.checkpoint_every,
        fingerprint=run_fingerprint("ppt", cfg, root, {"initial": tensor_hash(initial)}),
        name="ppt",
    )
    ckpt = checkpoint_dir(out)
    with frozen_backbone(model):
        prompt, history = train_prompt(
            initial,
            lambda params: make_optimizer("adam", params, cfg.ppt.lr),
            step_fn,
            val_fn,
            settings,
            ckpt,
            progress,
            resume,
        )
    info = {
        "made_by": "ppt",
        "backbone": getattr(model, "name", type(model).__name__),
        "init": cfg.prompt.init.value,
        "steps": steps,
        "batch_size": batch_size,
        "config": {"ppt": to_dict(cfg.ppt), "prompt": to_dict(cfg.prompt)},
    }
    return finish(out, ckpt, prompt, info, history, started, model)
