"""Percentile bounds of bootstrap draws, shared by the report and the meta-objective check.

Kept apart from :mod:`metapt_core.report` so that a stage which needs only this (the
meta-objective check) does not take the report's modules into its code identity.
"""

from __future__ import annotations

import numpy as np


def percentile_bounds(draws: np.ndarray, level: float) -> tuple[float, float]:
    """The ``(1 -/+ level) / 2`` quantiles of bootstrap draws ``draws[B]``."""
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return float(low), float(high)
