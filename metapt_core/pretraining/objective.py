"""The meta-objective check, scored: every pre-trained prompt of a pre-training seed and its
initial prompt on held-out-cluster episodes, before and after MetaPT's inner rule.

The rules and statistics are :mod:`metapt_core.objective`; this module runs the backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.meta.maml import Episode, inner_adapt
from metapt_core.objective import (
    INITIAL,
    SUPPORT_PRIOR,
    ObjectiveRow,
    meta_objective_rows,
    support_prior_losses,
    write_rows,
)
from metapt_core.pretraining.data import (
    EncodedTasks,
    PromptObjective,
    pool_format,
    unseen_episodes,
)
from metapt_core.pretraining.episodes import check_episodes, hold_out_clusters, load_aux_tasks
from metapt_core.specs import EpisodeSettings, PoolFormat


def episode_losses(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    model: PromptObjective,
    inner_lr: float,
    inner_steps: int,
    max_step_ratio: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-episode mean query cross-entropy before and after the inner rule.

    Returns:
        ``(before, after)``, each ``float64[E]``.
    """
    before: list[float] = []
    after: list[float] = []
    for episode in episodes:
        adapted = inner_adapt(
            prompt.detach(), episode.support, model.loss, inner_lr, inner_steps, False,
            max_step_ratio,
        )  # fmt: skip
        labels = episode.query.labels
        with torch.no_grad():
            for theta, out in ((prompt, before), (adapted, after)):
                scores = model.class_scores(theta.detach(), episode.query).float()
                out.append(float(F.cross_entropy(scores, labels.to(scores.device))))
    return np.asarray(before), np.asarray(after)


def check_set(
    shards_dir: Path,
    meta: EpisodeSettings,
    pool: PoolFormat,
    model: PromptObjective,
    count: int,
) -> list[Episode[Any]]:
    """The check's held-out-cluster episodes of one pre-training seed (``meta.seed``): the
    clusters MetaPT and PPT held out, rows disjoint from the calibration / validation ones."""
    episode_rows = meta.support_size + meta.query_size
    every = load_aux_tasks(shards_dir, pool.classes, meta.val_fraction, episode_rows, meta.seed)
    _, held_out = hold_out_clusters(every, meta.val_clusters, meta.seed)
    sizes = (meta.support_size, meta.query_size, meta.seed, meta.balanced_episodes)
    used = unseen_episodes(held_out, meta, sizes)
    rows = check_episodes(held_out, used, count, *sizes)
    if not rows:
        return []
    return EncodedTasks(model, held_out, pool_format(model, pool)).episodes(rows)


def meta_objective_check(
    shards_dir: str | Path,
    spec: Any,
    model: PromptObjective,
    prompts: Mapping[str, str | Path],
    out_dir: str | Path,
    level: float = 0.95,
    resamples: int = 2000,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[Path, list[ObjectiveRow]]:
    """Run the check for one pre-training seed and write ``out_dir/meta_objective.csv``.

    Args:
        shards_dir: the cluster stage's shards folder.
        spec: a :class:`~metapt_core.specs.MetaSpec` with ``meta.seed`` the pre-training seed.
        model: the frozen prompt model.
        prompts: init name -> its prompt folder (PPT, class-balanced PPT, MetaPT variants).
        out_dir: the folder to write (atomically).
        progress: ``progress(done, total, message)`` per prompt scored.

    The inner rule is a MetaPT prompt's own (its final ``inner_lr`` and ``max_step_ratio``,
    from ``prompt.json``), else PPT's; every prompt is adapted with that one rule. The rows
    also hold the model-free ``support_prior`` reference
    (:func:`~metapt_core.objective.support_prior_losses`).

    Returns:
        ``(out_dir, rows)``; no rows (and an empty CSV) when the run holds no cluster out.
    """
    from metapt_core.pretraining.start import starting_prompt
    from metapt_core.prompt import load_prompt
    from metapt_core.store import atomic_path

    meta = spec.meta
    loaded = {name: load_prompt(folder) for name, folder in sorted(prompts.items())}
    rules = [m for name, (_, m) in loaded.items() if name.startswith("metapt_")]
    rules += [m for _, m in loaded.values()]
    rule = rules[0] if rules else {}
    default_lr = 1.0 if isinstance(meta.inner_lr, str) else float(meta.inner_lr)
    alpha = float(rule.get("inner_lr", default_lr))
    ratio = float(rule.get("max_step_ratio", meta.max_step_ratio))
    settings = EpisodeSettings.of(meta)
    episodes = check_set(Path(shards_dir), settings, spec.pool, model, meta.check_episodes)
    rows: list[ObjectiveRow] = []
    if episodes:
        initial = starting_prompt(model, spec, None)
        candidates = {INITIAL: initial}
        for name, (tensor, _) in loaded.items():
            candidates[name] = tensor.to(initial.device, initial.dtype)
        losses = {}
        for done, (name, prompt) in enumerate(candidates.items()):
            if progress is not None:
                progress(done, len(candidates), f"{name}: {len(episodes)} episodes")
            losses[name] = episode_losses(prompt, episodes, model, alpha, meta.inner_steps, ratio)
        prior = support_prior_losses(
            [e.support.labels.cpu().numpy() for e in episodes],
            [e.query.labels.cpu().numpy() for e in episodes],
            len(spec.pool.classes),
        )
        losses[SUPPORT_PRIOR] = (prior, prior)
        rows = meta_objective_rows(
            losses, int(meta.seed), alpha, len(spec.pool.classes), level, resamples
        )
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        write_rows(rows, tmp / "meta_objective.csv")
    return out, rows
