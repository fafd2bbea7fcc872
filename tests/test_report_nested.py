"""Nested statistics against known values and simulated designs with a planted effect or none."""

from __future__ import annotations

import math

import numpy as np
import pytest

from metapt_core.report.nested import (
    VarianceComponents,
    interval_name,
    mcnemar,
    minimum_detectable_difference,
    nested_bootstrap,
    standard_error,
    variance_components,
)


def simulate(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    mean: float,
    sd: tuple[float, float, float],
) -> np.ndarray:
    """``x[p, f, r] = mean + a_p + b_pf + e_pfr`` with normal effects of the given sds."""
    p, f, r = shape
    a = rng.normal(0, sd[0], size=(p, 1, 1))
    b = rng.normal(0, sd[1], size=(p, f, 1))
    e = rng.normal(0, sd[2], size=(p, f, r))
    return mean + a + b + e


def test_variance_components_recover_the_planted_levels() -> None:
    rng = np.random.default_rng(0)
    x = simulate(rng, (60, 20, 100), 0.5, (0.1, 0.05, 0.3))
    got = variance_components(x)
    assert got.pretrain == pytest.approx(0.1**2, rel=0.3)
    assert got.fewshot == pytest.approx(0.05**2, rel=0.2)
    assert got.rows == pytest.approx(0.3**2, rel=0.02)
    shares = got.shares()
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["rows"] > shares["pretrain"] > shares["fewshot"]


def test_variance_components_of_a_constant_and_single_units() -> None:
    assert variance_components(np.full((3, 4, 5), 0.7)).total == 0
    assert math.isnan(variance_components(np.full((3, 4, 5), 0.7)).shares()["rows"])
    one_seed = variance_components(np.arange(12, dtype=float).reshape(1, 3, 4))
    assert one_seed.pretrain == 0.0 and one_seed.rows > 0
    with pytest.raises(ValueError, match=r"\[P, F, R\]"):
        variance_components(np.zeros((3, 4)))


@pytest.mark.parametrize("effect", [0.0, 0.05])
def test_nested_interval_covers_the_truth_at_about_its_level(effect: float) -> None:
    """Planted mean difference (0: none); 90% intervals over 150 simulated designs."""
    rng = np.random.default_rng(1 if effect else 2)
    shape, sd = (10, 5, 40), (0.1, 0.05, 0.3)
    covered = 0
    sims = 150
    for i in range(sims):
        x = simulate(rng, shape, effect, sd)
        interval = nested_bootstrap(x, n_resamples=300, level=0.9, seed=i)
        covered += interval.low <= effect <= interval.high
        assert interval.low <= interval.mean <= interval.high
    rate = covered / sims
    assert 0.82 <= rate <= 0.97, rate  # Monte Carlo sd of the rate: 0.024


def test_minimum_detectable_difference_is_detected_at_about_its_power() -> None:
    """A true difference equal to the design's MDD (level 0.95, power 0.8) is declared by the
    nested 95% interval (excluding 0) in about 80% of simulated designs."""
    shape, sd = (10, 5, 40), (0.1, 0.05, 0.3)
    truth = VarianceComponents(sd[0] ** 2, sd[1] ** 2, sd[2] ** 2)
    mdd = minimum_detectable_difference(truth, *shape)
    se = standard_error(truth, *shape)
    assert mdd == pytest.approx((1.959964 + 0.841621) * se, rel=1e-5)
    rng = np.random.default_rng(3)
    sims = 150
    detected = 0
    for i in range(sims):
        interval = nested_bootstrap(simulate(rng, shape, mdd, sd), 300, 0.95, seed=i)
        detected += interval.low > 0
    assert 0.6 <= detected / sims <= 0.95, detected / sims
    # more seeds, smaller MDD; more rows help least when seeds dominate
    assert minimum_detectable_difference(truth, 20, 5, 40) < mdd
    gain_rows = mdd - minimum_detectable_difference(truth, 10, 5, 400)
    gain_seeds = mdd - minimum_detectable_difference(truth, 30, 5, 40)
    assert 0 < gain_rows < gain_seeds


def test_mcnemar_known_values() -> None:
    # 10 rows only A got right, 2 only B, 88 both or neither: p = 2 * P[Bin(12, 1/2) <= 2]
    a = np.array([1] * 10 + [0] * 2 + [1] * 50 + [0] * 38, dtype=bool)
    b = np.array([0] * 10 + [1] * 2 + [1] * 50 + [0] * 38, dtype=bool)
    got = mcnemar(a, b)
    assert (got.a_only, got.b_only) == (10, 2)
    assert got.p_value == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar(a, a).p_value == 1.0
    assert mcnemar(b, a).p_value == pytest.approx(got.p_value)
    with pytest.raises(ValueError, match="shape"):
        mcnemar(a, b[:-1])


def test_mcnemar_holds_its_level_and_finds_a_planted_effect() -> None:
    rng = np.random.default_rng(4)
    rows, sims = 200, 400
    null_rejections = planted_rejections = 0
    for _ in range(sims):
        base = rng.random(rows) < 0.6
        flip_a = rng.random(rows) < 0.15  # each init flips rows independently
        flip_b = rng.random(rows) < 0.15
        a, b = base ^ flip_a, base ^ flip_b
        null_rejections += mcnemar(a, b).p_value < 0.05
        better = a | (rng.random(rows) < 0.3)  # A also right on 30% of the rows it missed
        planted_rejections += mcnemar(better, b).p_value < 0.05
    assert null_rejections / sims <= 0.07  # exact: at or below its level, up to noise
    assert planted_rejections / sims >= 0.8


def test_interval_name_follows_the_units() -> None:
    assert interval_name((3, 5), 0.95) == "range"
    assert interval_name((5, 4), 0.95) == "range"
    assert interval_name((5, 5), 0.95) == "95% interval"
    assert nested_bootstrap(np.ones((3, 5, 10)), 50, 0.95, 0).name == "range"
    assert nested_bootstrap(np.ones((6, 5, 10)), 50, 0.9, 0).name == "90% interval"
