"""The value checks that the config sections' ``__post_init__`` share."""

from __future__ import annotations

import math

from metapt_core.errors import ConfigError


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(name, value, "must be a positive number")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(name, value, "must be zero or more")


def _fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ConfigError(name, value, "must be strictly between 0 and 1")
