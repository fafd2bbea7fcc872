"""Statistics over seeds: mean, spread, bootstrap intervals and paired comparisons."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

TIE_TOLERANCE = 1e-9  # scores are ratios of counts: differences below this are ties


def mean_std(values: np.ndarray | list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values).

    ``std = sqrt(sum_i (x_i - mean)^2 / (n - 1))``.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else math.nan
    return mean, std


def bootstrap_ci(
    values: np.ndarray | list[float], n_resamples: int, level: float, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over seeds.

    Draws ``n_resamples`` resamples of the n values with replacement (``numpy`` generator seeded
    with ``seed``), takes each resample's mean, and returns the ``(1 - level)/2`` and
    ``(1 + level)/2`` quantiles of those means (linear interpolation).

    Args:
        values: per-seed scores, shape [n].
        n_resamples: bootstrap resamples (``grid.bootstrap``).
        level: coverage, e.g. 0.95 (``grid.ci_level``).
        seed: generator seed, so the interval is reproducible.

    Returns:
        ``(low, high)``; ``(x, x)`` for a single value; NaNs for none.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedComparison:
    """A method against a baseline on the same splits (differences ``method - baseline``).

    Attributes:
        n: paired observations (seeds).
        mean_diff: mean of the differences.
        ci_low, ci_high: percentile bootstrap interval of ``mean_diff``.
        wins, ties, losses: pairs where the method scores higher, equal, lower.
        t_pvalue: two-sided paired t-test p-value (NaN for n < 2 or zero-variance differences).
        wilcoxon_pvalue: two-sided Wilcoxon signed-rank p-value (zero differences dropped; NaN
            when no nonzero difference is left).
    """

    n: int
    mean_diff: float
    ci_low: float
    ci_high: float
    wins: int
    ties: int
    losses: int
    t_pvalue: float
    wilcoxon_pvalue: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_comparison(
    method: np.ndarray | list[float],
    baseline: np.ndarray | list[float],
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare paired scores of a method and a baseline, pair i sharing split i.

    Paired t-test: ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom
    (``scipy.stats.ttest_rel``). Wilcoxon signed-rank over the nonzero differences
    (``scipy.stats.wilcoxon``, exact distribution for small n).

    Args:
        method: per-pair scores of the method, shape [n].
        baseline: per-pair scores of the baseline, shape [n], in the same pair order.
        n_resamples, level, seed: of the bootstrap interval of the mean difference.
    """
    a = np.asarray(method, dtype=float)
    b = np.asarray(baseline, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in shape: {a.shape} vs {b.shape}")
    diff = a - b
    n = int(diff.size)
    wins = int(np.sum(diff > TIE_TOLERANCE))
    losses = int(np.sum(diff < -TIE_TOLERANCE))
    low, high = bootstrap_ci(diff, n_resamples, level, seed)
    t_p = math.nan
    if n >= 2 and float(np.std(diff, ddof=1)) > TIE_TOLERANCE:
        t_p = float(sps.ttest_rel(a, b).pvalue)
    w_p = math.nan
    if np.any(np.abs(diff) > TIE_TOLERANCE):
        nonzero = diff[np.abs(diff) > TIE_TOLERANCE]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns that small samples have little power
            w_p = float(sps.wilcoxon(nonzero).pvalue)
    return PairedComparison(
        n=n,
        mean_diff=float(diff.mean()) if n else math.nan,
        ci_low=low,
        ci_high=high,
        wins=wins,
        ties=n - wins - losses,
        losses=losses,
        t_pvalue=t_p,
        wilcoxon_pvalue=w_p,
    )
