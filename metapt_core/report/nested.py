"""Statistics with the right unit: pre-training seeds, few-shot seeds and test rows, nested.

A comparison of two initialisations on one task is a balanced nested design: ``P`` pre-training
seeds, within each ``F`` few-shot seeds, within each the same ``R`` test rows. Its data is an
array ``x[P, F, R]`` of per-row scores (1/0 correctness, or a paired difference of two such).

- :func:`nested_bootstrap`: a percentile interval for the grand mean that resamples every level
  (seeds with replacement, then few-shot seeds within each drawn seed, then rows within each
  drawn cell), so each level's sampling variance enters the interval.
- :func:`variance_components`: the method-of-moments (nested ANOVA) estimate of each level's
  variance, and its share of the total.
- :func:`minimum_detectable_difference`: the smallest true mean difference the design detects
  with a given power at a given two-sided level, from those components.
- :func:`mcnemar`: the exact paired test of two initialisations on the same test rows of one
  cell (the discordant rows only).
- :func:`interval_name`: "95% interval" only when every resampled level has at least
  :data:`MIN_UNITS_FOR_INTERVAL` units; otherwise the percentile bounds are called a "range".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from metapt_core.quantiles import percentile_bounds

MIN_UNITS_FOR_INTERVAL = 5  # fewer units at a level: the bootstrap bounds are a range


def _as_design(values: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 3 or min(x.shape) < 1:
        raise ValueError(f"expected a [P, F, R] array with every level non-empty, got {x.shape}")
    return x


@dataclass(frozen=True)
class NestedInterval:
    """A grand mean and its nested-bootstrap percentile bounds."""

    mean: float
    low: float
    high: float
    level: float
    units: tuple[int, int, int]  # (P, F, R)

    @property
    def name(self) -> str:
        return interval_name(self.units[:2], self.level)


def nested_draws(values: np.ndarray, n_resamples: int, seed: int, chunk: int = 256) -> np.ndarray:
    """The ``n_resamples`` bootstrap grand means of ``x[P, F, R]`` (see :func:`nested_bootstrap`).

    Resample ``b`` draws ``p_1..p_P`` from the P seeds with replacement; for each drawn seed,
    ``f_1..f_F`` from its F few-shot seeds; for each drawn cell, ``r_1..r_R`` from its R rows;
    its statistic is ``mean_{i,j,k} x[p_i, f_ij, r_ijk]`` (numpy generator seeded by ``seed``).
    """
    x = _as_design(values)
    p, f, r = x.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        pi = rng.integers(0, p, size=(b, p))
        fi = rng.integers(0, f, size=(b, p, f))
        ri = rng.integers(0, r, size=(b, p, f, r))
        drawn = x[pi[:, :, None, None], fi[:, :, :, None], ri]
        means[start : start + b] = drawn.mean(axis=(1, 2, 3))
    return means


def nested_bootstrap(
    values: np.ndarray, n_resamples: int, level: float, seed: int, chunk: int = 256
) -> NestedInterval:
    """Percentile interval of the grand mean of ``x[P, F, R]`` by a three-level bootstrap.

    The interval is the ``(1 -/+ level) / 2`` quantiles of :func:`nested_draws`. A level
    resampled with few units gives a coarse, optimistic interval; see :func:`interval_name`.
    """
    x = _as_design(values)
    low, high = percentile_bounds(nested_draws(x, n_resamples, seed, chunk), level)
    return NestedInterval(float(x.mean()), low, high, level, tuple(x.shape))  # type: ignore[arg-type]


@dataclass(frozen=True)
class VarianceComponents:
    """Per-level variances of a nested design ``x[P, F, R]`` (method of moments, >= 0)."""

    pretrain: float  # between pre-training seeds
    fewshot: float  # between few-shot seeds within a pre-training seed
    rows: float  # between test rows within a cell

    @property
    def total(self) -> float:
        return self.pretrain + self.fewshot + self.rows

    def shares(self) -> dict[str, float]:
        """Each level's share of the total variance (NaN when the total is 0)."""
        total = self.total
        if total <= 0:
            return {"pretrain": math.nan, "fewshot": math.nan, "rows": math.nan}
        return {
            "pretrain": self.pretrain / total,
            "fewshot": self.fewshot / total,
            "rows": self.rows / total,
        }


def variance_components(values: np.ndarray) -> VarianceComponents:
    """Nested-ANOVA estimates of the variance at each level of ``x[P, F, R]``.

    With cell means ``m_pf``, seed means ``m_p`` and the grand mean ``m``::

        MS_P = F R sum_p (m_p - m)^2 / (P - 1)
        MS_F = R sum_pf (m_pf - m_p)^2 / (P (F - 1))
        MS_E = sum_pfr (x_pfr - m_pf)^2 / (P F (R - 1))
        s2_rows = MS_E,  s2_fewshot = (MS_F - MS_E) / R,  s2_pretrain = (MS_P - MS_F) / (F R)

    each clipped at 0. A level with a single unit contributes 0 (it cannot be estimated).
    """
    x = _as_design(values)
    p, f, r = x.shape
    if np.ptp(x) == 0:  # all equal: no variance anywhere (not a round-off of the means)
        return VarianceComponents(0.0, 0.0, 0.0)
    cell = x.mean(axis=2)
    seed_means = cell.mean(axis=1)
    grand = float(x.mean())
    ms_e = float(((x - cell[:, :, None]) ** 2).sum() / (p * f * (r - 1))) if r > 1 else 0.0
    ms_f = float(r * ((cell - seed_means[:, None]) ** 2).sum() / (p * (f - 1))) if f > 1 else ms_e
    ms_p = float(f * r * ((seed_means - grand) ** 2).sum() / (p - 1)) if p > 1 else ms_f
    rows = ms_e
    fewshot = max(0.0, (ms_f - ms_e) / r) if f > 1 else 0.0
    pretrain = max(0.0, (ms_p - ms_f) / (f * r)) if p > 1 else 0.0
    return VarianceComponents(pretrain, fewshot, rows)


def standard_error(components: VarianceComponents, p: int, f: int, r: int) -> float:
    """Standard error of the grand mean of a nested design with these components:
    ``sqrt(s2_pretrain / P + s2_fewshot / (P F) + s2_rows / (P F R))``."""
    return math.sqrt(
        components.pretrain / p + components.fewshot / (p * f) + components.rows / (p * f * r)
    )


def minimum_detectable_difference(
    components: VarianceComponents,
    p: int,
    f: int,
    r: int,
    level: float = 0.95,
    power: float = 0.8,
) -> float:
    """The smallest true mean difference a two-sided test at ``level`` detects with ``power``:
    ``(z_{(1 + level) / 2} + z_{power}) * SE`` with SE from :func:`standard_error` (normal
    approximation; with few seeds the t quantiles are larger and so is the true MDD)."""
    z = float(sps.norm.ppf((1 + level) / 2) + sps.norm.ppf(power))
    return z * standard_error(components, p, f, r)


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test on one cell's rows: ``b`` rows only A got right, ``c`` only B."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemar:
    """Two-sided exact McNemar test of two initialisations on the same test rows.

    Under no difference each discordant row is A-only with probability 1/2, so with ``b``
    A-only and ``c`` B-only rows, ``p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``
    (``scipy.stats.binomtest``'s two-sided exact test at 1/2); ``p = 1`` when no row is
    discordant.
    """
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired rows differ in shape: {a.shape} vs {b.shape}")
    a_only = int((a & ~b).sum())
    b_only = int((~a & b).sum())
    n = a_only + b_only
    if n == 0:
        return McNemar(0, 0, 1.0)
    p_value = float(sps.binomtest(a_only, n, 0.5).pvalue)
    return McNemar(a_only, b_only, p_value)


def interval_name(units: tuple[int, ...], level: float) -> str:
    """``"95% interval"`` when every resampled level has >= 5 units, else ``"range"``."""
    if min(units) < MIN_UNITS_FOR_INTERVAL:
        return "range"
    return f"{int(round(100 * level))}% interval"
