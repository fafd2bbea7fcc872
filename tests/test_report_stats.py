"""Report statistics against hand-computed and reference values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from metapt_core.report.stats import bootstrap_ci, mean_std, paired_comparison


def test_mean_std_known_values():
    mean, std = mean_std([2, 4, 4, 4, 5, 5, 7, 9])
    assert mean == pytest.approx(5.0)
    assert std == pytest.approx(math.sqrt(32 / 7))  # sum of squares 32, n - 1 = 7
    assert math.isnan(mean_std([0.7])[1])
    assert all(math.isnan(v) for v in mean_std([]))


def test_bootstrap_two_points_covers_the_full_range():
    # Resample means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and
    # 97.5% quantiles are 0 and 1.
    assert bootstrap_ci([0.0, 1.0], 4000, 0.95, seed=0) == (0.0, 1.0)
    # ... and at 40% coverage (quantiles 0.3 and 0.7) both ends are 0.5.
    assert bootstrap_ci([0.0, 1.0], 4000, 0.40, seed=0) == pytest.approx((0.5, 0.5))


def test_bootstrap_degenerate_cases():
    assert bootstrap_ci([0.8, 0.8, 0.8], 500, 0.95, seed=1) == pytest.approx((0.8, 0.8))
    assert bootstrap_ci([0.3], 500, 0.95, seed=1) == (0.3, 0.3)
    assert all(math.isnan(v) for v in bootstrap_ci([], 500, 0.95, seed=1))


def test_bootstrap_is_reproducible_and_sane():
    values = np.array([0.61, 0.70, 0.55, 0.66, 0.72])
    first = bootstrap_ci(values, 2000, 0.95, seed=3)
    assert first == bootstrap_ci(values, 2000, 0.95, seed=3)
    assert values.min() <= first[0] <= values.mean() <= first[1] <= values.max()
    narrow = bootstrap_ci(values, 2000, 0.50, seed=3)
    assert first[0] <= narrow[0] <= narrow[1] <= first[1]


def test_bootstrap_matches_normal_theory_and_scipy_on_a_large_sample():
    x = np.random.default_rng(0).normal(0.7, 0.05, size=400)
    low, high = bootstrap_ci(x, 4000, 0.95, seed=0)
    half = 1.96 * x.std(ddof=0) / math.sqrt(x.size)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=half * 0.2)
    ref = sps.bootstrap((x,), np.mean, n_resamples=4000, method="percentile", rng=1)
    assert low == pytest.approx(ref.confidence_interval.low, abs=half * 0.1)
    assert high == pytest.approx(ref.confidence_interval.high, abs=half * 0.1)


def exact_percentile_interval(values: list[float], level: float) -> tuple[float, float]:
    """The percentile interval of the mean over all n^n equally likely resamples, enumerated."""
    means = sorted(
        sum(draw) / len(values) for draw in itertools.product(values, repeat=len(values))
    )
    alpha = (1.0 - level) / 2.0
    # the smallest mean whose cumulative probability reaches each tail's quantile
    low = means[math.ceil(alpha * len(means)) - 1]
    high = means[math.ceil((1.0 - alpha) * len(means)) - 1]
    return low, high


def test_paired_t_and_wilcoxon_known_values():
    baseline = [0.50, 0.50, 0.50, 0.50]
    method = [0.51, 0.52, 0.53, 0.54]  # differences 0.01 .. 0.04
    out = paired_comparison(method, baseline, n_resamples=20_000, seed=0)
    # d = 0.01 * [1, 2, 3, 4]: mean 0.025, sd 0.01 * sqrt(5/3), t = 0.025 / (sd / 2) = 3.873
    t = 0.025 / (0.01 * math.sqrt(5 / 3) / 2)
    assert t == pytest.approx(3.8730, abs=1e-4)
    assert out.t_pvalue == pytest.approx(2 * sps.t.sf(t, df=3), rel=1e-6)
    # all 4 differences positive: exact two-sided signed-rank p = 2 / 2^4
    assert out.wilcoxon_pvalue == pytest.approx(0.125)
    assert out.mean_diff == pytest.approx(0.025)
    assert (out.wins, out.ties, out.losses) == (4, 0, 0)
    # The interval is the percentile interval of the resampled mean differences. Of the 4^4
    # equally likely resamples of d, the sums of the four draws (in 0.01) run 4..16 with counts
    # 1, 4, 10, 20, 31, 40, 44, 40, 31, 20, 10, 4, 1 of 256: P(S <= 5) = 5/256 < 0.025 <=
    # P(S <= 6) = 15/256 and P(S <= 13) = 241/256 < 0.975 <= 251/256, so the 95% bounds are the
    # means 6/4 and 14/4 hundredths (20,000 resamples put the empirical 2.5% quantile over 5
    # standard errors from either neighbouring sum).
    exact = exact_percentile_interval([0.01, 0.02, 0.03, 0.04], 0.95)
    assert exact == pytest.approx((0.015, 0.035))
    assert (out.ci_low, out.ci_high) == pytest.approx(exact)
    # at 80%: P(S <= 6) = 15/256 < 0.10 <= 35/256 and P(S <= 12) = 221/256 < 0.90 <= 241/256
    # (a level not split between both tails, 0.20 / 0.80, would give 8/4 and 12/4)
    eighty = paired_comparison(method, baseline, n_resamples=20_000, level=0.80, seed=1)
    assert exact_percentile_interval([0.01, 0.02, 0.03, 0.04], 0.80) == pytest.approx(
        (0.0175, 0.0325)
    )
    assert (eighty.ci_low, eighty.ci_high) == pytest.approx((0.0175, 0.0325))


def test_paired_counts_ties_and_undefined_tests():
    out = paired_comparison([0.5, 0.6, 0.7], [0.5, 0.5, 0.8])
    assert (out.wins, out.ties, out.losses) == (1, 1, 1)
    assert out.mean_diff == pytest.approx(0.0)
    same = paired_comparison([0.5, 0.6], [0.5, 0.6])
    assert (same.wins, same.ties, same.losses) == (0, 2, 0)
    assert math.isnan(same.t_pvalue) and math.isnan(same.wilcoxon_pvalue)
    with pytest.raises(ValueError):
        paired_comparison([0.1, 0.2], [0.1])


def test_paired_wilcoxon_five_negative():
    out = paired_comparison([0.1, 0.2, 0.3, 0.4, 0.5], [0.2, 0.4, 0.6, 0.8, 1.0])
    assert out.wilcoxon_pvalue == pytest.approx(2 / 32)
    assert out.losses == 5 and out.mean_diff == pytest.approx(-0.3)
