"""The evidence tables: every mean and paired difference over the nested design of the grid.

A cell's test rows are scored 1/0 (``test_correct``), so one (protocol, shots, task, init) is an
array ``x[P, F, R]``: P pre-training seeds, within each F few-shot seeds, within each the same R
test rows. A paired difference of two inits is ``x_a - x_b`` on the same rows of the same splits
(checked by ``split_id``). For each, :mod:`metapt_core.report.nested` gives the nested-bootstrap
bounds (every level resampled), the variance share of each level and the design's minimum
detectable difference (MDD: 80% power, two-sided, at the report's level); each (pre-training
seed, few-shot seed) cell also gets an exact McNemar test.

The AVERAGE row averages tasks with tasks held fixed: its draws are the mean over tasks of
each task's draws (the same resample indices of seeds are not shared across tasks, which
ignores the positive correlation between tasks of one seed and so errs narrow), its SE is
``sqrt(sum_t SE_t^2) / T``.

Bounds are called a "95% interval" only when both seed levels have at least 5 units, else a
"range" (:func:`metapt_core.report.nested.interval_name`); verdict words follow the bounds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from metapt_core.errors import DataError
from metapt_core.quantiles import percentile_bounds
from metapt_core.report.nested import (
    interval_name,
    mcnemar,
    nested_draws,
    standard_error,
    variance_components,
)
from metapt_core.report.tables import AVERAGE, init_order, metapt_methods, protocols, stable_seed
from metapt_core.specs import ReportGrid

SIGNIFICANT = 0.05  # per-cell McNemar level for the counts of cells each side wins
POWER = 0.8


def mdd_z(level: float, power: float = POWER) -> float:
    """``z_{(1 + level) / 2} + z_power``: the MDD in standard errors (normal approximation,
    as :func:`metapt_core.report.nested.minimum_detectable_difference`)."""
    from scipy import stats as sps

    return float(sps.norm.ppf((1 + level) / 2) + sps.norm.ppf(power))


def _bits(text: Any) -> np.ndarray:
    return np.frombuffer(str(text).encode(), dtype=np.uint8) - ord("0")


def has_rows(frame: pd.DataFrame) -> bool:
    """True when every cell carries its per-row correctness (the nested statistics need it)."""
    return (
        "test_correct" in frame.columns
        and frame["test_correct"].map(lambda v: isinstance(v, str) and len(v) > 0).all()
    )


def design(part: pd.DataFrame) -> tuple[np.ndarray, list[int], list[int], list[str]] | None:
    """``(x[P, F, R], pretrain seeds, few-shot seeds, split ids)`` of one init's cells, or None
    when the design is not balanced (a seed missing somewhere, rows of other lengths)."""
    pseeds = sorted(int(p) for p in part["pretrain_seed"].unique())
    fseeds = sorted(int(s) for s in part["seed"].unique())
    indexed = part.set_index(["pretrain_seed", "seed"])
    if len(indexed) != len(pseeds) * len(fseeds):
        return None
    rows, splits = [], []
    for p in pseeds:
        level = []
        for f in fseeds:
            if (p, f) not in indexed.index:
                return None
            level.append(_bits(indexed.at[(p, f), "test_correct"]))
            splits.append(str(indexed.at[(p, f), "split_id"]))
        rows.append(level)
    lengths = {len(r) for level in rows for r in level}
    if len(lengths) != 1:
        return None
    return np.asarray(rows, dtype=float), pseeds, fseeds, splits


def _cells(frame: pd.DataFrame, protocol: str, shots: int, task: str, init: str) -> pd.DataFrame:
    return frame[
        (frame["protocol"] == protocol)
        & (frame["shots"] == shots)
        & (frame["task"] == task)
        & (frame["init"] == init)
    ]


def _summary(
    per_task: Sequence[np.ndarray], grid: ReportGrid, key: tuple[Any, ...]
) -> dict[str, Any]:
    """Mean, nested bounds, their name, the design, variance shares and the MDD of the mean
    over tasks of ``per_task`` designs ``x_t[P, F, R_t]``."""
    draws = np.mean(
        [nested_draws(x, grid.bootstrap, stable_seed(*key, t)) for t, x in enumerate(per_task)],
        axis=0,
    )
    low, high = percentile_bounds(draws, grid.ci_level)
    p, f = per_task[0].shape[:2]
    components = [variance_components(x) for x in per_task]
    se = math.sqrt(
        sum(standard_error(c, *x.shape) ** 2 for c, x in zip(components, per_task, strict=True))
    ) / len(per_task)
    mdd = mdd_z(grid.ci_level) * se
    totals = {
        level: float(np.mean([getattr(c, level) for c in components]))
        for level in ("pretrain", "fewshot", "rows")
    }
    total = sum(totals.values())
    shares = {k: (v / total if total > 0 else math.nan) for k, v in totals.items()}
    return {
        "mean": float(np.mean([x.mean() for x in per_task])),
        "low": low,
        "high": high,
        "interval": interval_name((p, f), grid.ci_level),
        "pretrain_seeds": p,
        "fewshot_seeds": f,
        "rows": int(sum(x.shape[2] for x in per_task)),
        "se": se,
        "mdd": mdd,
        "share_pretrain": shares["pretrain"],
        "share_fewshot": shares["fewshot"],
        "share_rows": shares["rows"],
    }


def accuracy_table(
    frame: pd.DataFrame, grid: ReportGrid, untuned: Sequence[Mapping[str, Any]] = ()
) -> pd.DataFrame:
    """Per (protocol, shots, task | AVERAGE, init): mean accuracy with nested bounds, the design,
    the variance shares, and the untuned accuracy (mean over pre-training seeds of the prompt's
    score with no tuning; AVERAGE: mean over tasks)."""
    if frame.empty or not has_rows(frame):
        return pd.DataFrame()
    order = init_order(frame, grid)
    tasks = sorted(frame["task"].unique())
    untuned_frame = pd.DataFrame(list(untuned))
    rows: list[dict[str, Any]] = []
    for protocol in protocols(frame):
        for shots in sorted(int(s) for s in frame["shots"].unique()):
            for init in order:
                designs: dict[str, np.ndarray] = {}
                for task in tasks:
                    found = design(_cells(frame, protocol, shots, task, init))
                    if found is not None:
                        designs[task] = found[0]
                for task in [*tasks, AVERAGE]:
                    chosen = list(designs.values()) if task == AVERAGE else (
                        [designs[task]] if task in designs else [])  # fmt: skip
                    if not chosen or (task == AVERAGE and len(chosen) != len(tasks)):
                        continue
                    summary = _summary(chosen, grid, ("acc", protocol, shots, task, init))
                    rows.append({"protocol": protocol, "shots": shots, "task": task,
                                 "init": init, **summary,
                                 "untuned": _untuned(untuned_frame, task, init, tasks)})  # fmt: skip
    return pd.DataFrame(rows)


def _untuned(frame: pd.DataFrame, task: str, init: str, tasks: Sequence[str]) -> float:
    if frame.empty:
        return math.nan
    part = frame[frame["init"] == init]
    if task != AVERAGE:
        part = part[part["task"] == task]
        return float(part["accuracy"].mean()) if not part.empty else math.nan
    means = [part[part["task"] == t]["accuracy"].mean() for t in tasks]
    return float(np.mean(means)) if all(np.isfinite(means)) else math.nan


def verdict_word(row: Mapping[str, Any]) -> str:
    """What the bounds of ``method - baseline`` allow one to say, in words."""
    ranged = row["interval"] == "range"
    if row["low"] > 0:
        return "ahead (range excludes 0)" if ranged else "better"
    if row["high"] < 0:
        return "behind (range excludes 0)" if ranged else "worse"
    return "no difference detected"


def comparison_table(frame: pd.DataFrame, grid: ReportGrid) -> pd.DataFrame:
    """Each MetaPT init against every other init, per (protocol, shots, task | AVERAGE): the
    paired difference with nested bounds, design, variance shares, MDD, the per-cell McNemar
    counts and the verdict word. Differences are ``method - baseline`` in accuracy.

    Raises:
        DataError: two inits of one cell were trained on different splits.
    """
    if frame.empty or not has_rows(frame):
        return pd.DataFrame()
    order = init_order(frame, grid)
    tasks = sorted(frame["task"].unique())
    rows: list[dict[str, Any]] = []
    for protocol in protocols(frame):
        for shots in sorted(int(s) for s in frame["shots"].unique()):
            for method in metapt_methods(order):
                for baseline in order:
                    if baseline == method:
                        continue
                    diffs: dict[str, np.ndarray] = {}
                    counts: dict[str, tuple[int, int, int]] = {}
                    for task in tasks:
                        a = design(_cells(frame, protocol, shots, task, method))
                        b = design(_cells(frame, protocol, shots, task, baseline))
                        if a is None or b is None or a[1:3] != b[1:3] or a[0].shape != b[0].shape:
                            continue
                        if a[3] != b[3]:
                            raise DataError(
                                "cell_results",
                                f"{task}/k{shots}",
                                f"{method} and {baseline} were trained on different splits",
                            )
                        diffs[task] = a[0] - b[0]
                        counts[task] = mcnemar_counts(a[0], b[0])
                    for task in [*tasks, AVERAGE]:
                        chosen = list(diffs.values()) if task == AVERAGE else (
                            [diffs[task]] if task in diffs else [])  # fmt: skip
                        if not chosen or (task == AVERAGE and len(chosen) != len(tasks)):
                            continue
                        key = ("diff", protocol, shots, task, method, baseline)
                        row = {"protocol": protocol, "shots": shots, "task": task,
                               "method": method, "baseline": baseline,
                               **_summary(chosen, grid, key)}  # fmt: skip
                        row["mean_diff"] = row.pop("mean")
                        picked = counts.values() if task == AVERAGE else [counts[task]]
                        row["mcnemar_wins"] = sum(c[0] for c in picked)
                        row["mcnemar_losses"] = sum(c[1] for c in picked)
                        row["cells"] = sum(c[2] for c in picked)
                        row["verdict"] = verdict_word(row)
                        rows.append(row)
    return pd.DataFrame(rows)


def mcnemar_counts(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    """(cells where a is better at ``SIGNIFICANT``, cells where b is, cells) over the paired
    ``[P, F, R]`` correctness of two inits, by the exact McNemar test of each cell."""
    wins = losses = 0
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    for row_a, row_b in zip(flat_a, flat_b, strict=True):
        test = mcnemar(row_a.astype(bool), row_b.astype(bool))
        if test.p_value < SIGNIFICANT:
            wins += int(test.a_only > test.b_only)
            losses += int(test.a_only < test.b_only)
    return wins, losses, len(flat_a)
