"""The meta-objective check: did a meta-learned prompt lower the loss MAML minimises?

MAML minimises the query loss after the inner step, ``L_Q(theta'(theta))``. The check scores
every pre-trained prompt of one pre-training seed (and the initial prompt they all started
from) on ``E`` held-out-cluster episodes that nothing was chosen on (disjoint in rows from the
episodes that chose alpha and the kept prompt), before and after MetaPT's own inner rule, paired
by episode:

    before_e(p) = L_{Q_e}(p),   after_e(p) = L_{Q_e}(p'_e),   p'_e = inner rule on S_e from p

    loss_after(p) = mean_e after_e(p)         (percentile bootstrap over episodes -> [low, high])
    diff_vs_ppt(m) = mean_e [after_e(m) - after_e(ppt)]     (paired; the same resamples)

A meta-learned prompt ``m`` has **trained** when the upper bound of ``loss_after(m)`` is below
chance (``log C``) and the upper bound of ``after(m) - after(initial)`` is below 0; it **beats
PPT on its own objective** when the upper bound of ``diff_vs_ppt(m)`` is below 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.meta.episodes import check_episodes, hold_out_clusters, load_tasks, unseen_episodes
from metapt_core.meta.maml import Episode, inner_adapt
from metapt_core.pretraining.data import EncodedTasks, PromptObjective, pool_format
from metapt_core.specs import EpisodeSettings, PoolFormat

INITIAL = "initial"
REFERENCE = "ppt"


@dataclass(frozen=True)
class ObjectiveRow:
    """One prompt's line of ``meta_objective.csv`` (losses in nats, bounds at ``level``).

    ``diff_*`` compare this prompt's after-loss with PPT's (NaN for PPT itself or when the grid
    has no PPT); ``vs_initial_*`` with the initial prompt's. ``trained`` and ``beats_ppt`` are
    set for meta-learned prompts only (empty otherwise).
    """

    pretrain_seed: int
    init: str
    episodes: int
    inner_lr: float
    chance: float
    loss_before: float
    loss_after: float
    after_low: float
    after_high: float
    diff_vs_ppt: float
    diff_low: float
    diff_high: float
    vs_initial: float
    vs_initial_low: float
    vs_initial_high: float
    trained: bool | None
    beats_ppt: bool | None


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


def bootstrap_mean(
    values: np.ndarray, resamples: np.ndarray, level: float
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` ``[E]`` and its percentile interval over
    the resampled episode indices ``resamples`` ``[R, E]``."""
    means = values[resamples].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(values.mean()), float(low), float(high)


def meta_objective_rows(
    losses: Mapping[str, tuple[np.ndarray, np.ndarray]],
    pretrain_seed: int,
    inner_lr: float,
    n_classes: int,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> list[ObjectiveRow]:
    """The check's rows from per-episode losses (module docstring for the rules).

    Args:
        losses: init name -> ``(before[E], after[E])``, the same episodes in the same order;
            ``"initial"`` for the starting prompt, ``"ppt"`` for PPT where the grid has it.
        resamples: bootstrap resamples of the episodes (one index set shared by every prompt,
            so differences are paired).
    """
    count = len(next(iter(losses.values()))[0])
    rng = np.random.default_rng([seed, pretrain_seed])
    index = rng.integers(0, count, size=(resamples, count))
    chance = math.log(max(n_classes, 2))
    nan = (math.nan, math.nan, math.nan)
    rows = []
    for init, (before, after) in losses.items():
        mean_after, low, high = bootstrap_mean(after, index, level)
        vs_ppt = nan
        if REFERENCE in losses and init != REFERENCE:
            vs_ppt = bootstrap_mean(after - losses[REFERENCE][1], index, level)
        vs_initial = nan
        if INITIAL in losses and init != INITIAL:
            vs_initial = bootstrap_mean(after - losses[INITIAL][1], index, level)
        learned = init.startswith("metapt_")
        trained = bool(high < chance and vs_initial[2] < 0) if learned else None
        beats = bool(vs_ppt[2] < 0) if learned and REFERENCE in losses else None
        rows.append(
            ObjectiveRow(
                pretrain_seed,
                init,
                count,
                inner_lr,
                chance,
                float(before.mean()),
                mean_after,
                low,
                high,
                *vs_ppt,
                *vs_initial,
                trained,
                beats,
            )  # fmt: skip
        )
    return rows


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
    every = load_tasks(shards_dir, pool.classes, meta.val_fraction, episode_rows, meta.seed)
    _, held_out = hold_out_clusters(every, meta.val_clusters, meta.seed)
    used = unseen_episodes(
        held_out, meta.val_episodes, meta.support_size, meta.query_size, meta.seed
    )
    rows = check_episodes(held_out, used, count, meta.support_size, meta.query_size, meta.seed)
    if not rows:
        return []
    return EncodedTasks(model, held_out, pool_format(model, pool)).episodes(rows)


def write_rows(rows: Sequence[ObjectiveRow], path: Path) -> None:
    """``meta_objective.csv``: one line per (pre-training seed, init)."""
    import pandas as pd

    columns = list(ObjectiveRow.__dataclass_fields__)
    pd.DataFrame([asdict(r) for r in rows], columns=columns).to_csv(path, index=False)


def verdict(row: ObjectiveRow | Mapping[str, Any]) -> str:
    """One line on a meta-learned prompt's check, e.g. "MetaPT did not train on pre-training
    seed 1 (after-loss 1.13 [1.09, 1.17], chance 1.10)"."""
    r = asdict(row) if isinstance(row, ObjectiveRow) else dict(row)
    seed = int(r["pretrain_seed"])
    bound = f"after-loss {r['loss_after']:.3f} [{r['after_low']:.3f}, {r['after_high']:.3f}]"
    if not _true(r.get("trained")):
        return (
            f"{r['init']} did not train on pre-training seed {seed} ({bound}; chance "
            f"{r['chance']:.3f}; minus the initial prompt's {r['vs_initial']:+.3f} "
            f"[{r['vs_initial_low']:+.3f}, {r['vs_initial_high']:+.3f}])"
        )
    line = f"{r['init']} trained on pre-training seed {seed} ({bound}, chance {r['chance']:.3f})"
    if _true(r.get("beats_ppt")):
        return line + (
            f" and beats PPT on its own objective ({r['diff_vs_ppt']:+.3f} "
            f"[{r['diff_low']:+.3f}, {r['diff_high']:+.3f}])"
        )
    if r.get("beats_ppt") is None or (
        isinstance(r["diff_vs_ppt"], float) and math.isnan(r["diff_vs_ppt"])
    ):
        return line
    return line + (
        f"; it does not beat PPT on its own objective ({r['diff_vs_ppt']:+.3f} "
        f"[{r['diff_low']:+.3f}, {r['diff_high']:+.3f}])"
    )


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")


def meta_objective_check(
    shards_dir: str | Path,
    spec: Any,
    model: PromptObjective,
    prompts: Mapping[str, str | Path],
    out_dir: str | Path,
    level: float = 0.95,
    resamples: int = 2000,
) -> tuple[Path, list[ObjectiveRow]]:
    """Run the check for one pre-training seed and write ``out_dir/meta_objective.csv``.

    Args:
        shards_dir: the cluster stage's shards folder.
        spec: a :class:`~metapt_core.specs.MetaSpec` with ``meta.seed`` the pre-training seed.
        model: the frozen prompt model.
        prompts: init name -> its prompt folder (PPT, class-balanced PPT, MetaPT variants).
        out_dir: the folder to write (atomically).

    The inner rule is a MetaPT prompt's own (its final ``inner_lr`` and ``max_step_ratio``,
    from ``prompt.json``), else PPT's; every prompt is adapted with that one rule.

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
        losses = {
            name: episode_losses(p, episodes, model, alpha, meta.inner_steps, ratio)
            for name, p in candidates.items()
        }
        rows = meta_objective_rows(
            losses, int(meta.seed), alpha, len(spec.pool.classes), level, resamples
        )
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        write_rows(rows, tmp / "meta_objective.csv")
    return out, rows
