"""The meta-objective check's statistics and verdicts (numpy only; the scoring is
:mod:`metapt_core.pretraining.objective`): did a meta-learned prompt lower the loss MAML
minimises?

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

Beside the prompts the check scores one reference that needs no model, ``support_prior``: each
query row predicted by its episode's support label frequencies, add-one smoothed,

    p_e(c) = (n_e(c) + 1) / (S + C),   prior_e = -(1/Q) sum_q log p_e(y_q)

so that where episodes keep their clusters' natural class mix (``meta.balanced_episodes:
false``) a reader sees how much of an after-loss below chance counting the support's labels
alone reaches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metapt_core.quantiles import percentile_bounds

INITIAL = "initial"
REFERENCE = "ppt"
SUPPORT_PRIOR = "support_prior"


def support_prior_losses(
    support: Sequence[np.ndarray], query: Sequence[np.ndarray], n_classes: int
) -> np.ndarray:
    """Per-episode query cross-entropy of the add-one-smoothed support label frequencies
    (module docstring): ``support[e]`` ``int[S]`` and ``query[e]`` ``int[Q]`` class indices;
    returns ``float64[E]``."""
    out = np.empty(len(support))
    for e, (s, q) in enumerate(zip(support, query, strict=True)):
        counts = np.bincount(np.asarray(s, dtype=np.int64), minlength=n_classes) + 1.0
        log_p = np.log(counts / counts.sum())
        out[e] = -float(log_p[np.asarray(q, dtype=np.int64)].mean())
    return out


@dataclass(frozen=True)
class ObjectiveRow:
    """One prompt's line of ``meta_objective.csv`` (losses in nats, bounds at ``level``).

    ``diff_*`` compare this prompt's after-loss with PPT's (NaN for PPT itself or when the grid
    has no PPT); ``vs_initial_*`` with the initial prompt's; ``vs_prior_*`` with the
    ``support_prior`` reference's (where it was scored). ``trained``, ``beats_ppt`` and
    ``beats_prior`` (the bound of ``vs_prior`` below 0) are set for meta-learned prompts only
    (empty otherwise).
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
    vs_prior: float = math.nan
    vs_prior_low: float = math.nan
    vs_prior_high: float = math.nan
    beats_prior: bool | None = None


def bootstrap_mean(
    values: np.ndarray, resamples: np.ndarray, level: float
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of ``values`` ``[E]`` and its percentile interval over
    the resampled episode indices ``resamples`` ``[R, E]``."""
    low, high = percentile_bounds(values[resamples].mean(axis=1), level)
    return float(values.mean()), low, high


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
        vs_prior = nan
        if SUPPORT_PRIOR in losses and init != SUPPORT_PRIOR:
            vs_prior = bootstrap_mean(after - losses[SUPPORT_PRIOR][1], index, level)
        learned = init.startswith("metapt_")
        trained = bool(high < chance and vs_initial[2] < 0) if learned else None
        beats = bool(vs_ppt[2] < 0) if learned and REFERENCE in losses else None
        beats_prior = bool(vs_prior[2] < 0) if learned and SUPPORT_PRIOR in losses else None
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
                *vs_prior,
                beats_prior,
            )  # fmt: skip
        )
    return rows


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
    comparisons = (
        ("diff_vs_ppt", "diff", "beats_ppt", "PPT on its own objective"),
        ("vs_prior", "vs_prior", "beats_prior", "counting the support's labels"),
    )
    for value, bounds, beats, what in comparisons:
        if _number(r.get(value)):
            figure = f"({r[value]:+.3f} [{r[bounds + '_low']:+.3f}, {r[bounds + '_high']:+.3f}])"
            line += f"; it {'beats' if _true(r.get(beats)) else 'does not beat'} {what} {figure}"
    return line


def _number(value: Any) -> bool:
    """A finite number (a CSV's empty cell or NaN is not)."""
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "1.0")
