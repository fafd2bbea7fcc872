"""Errors that a user can act on: one line naming the field and the value."""

from __future__ import annotations

from typing import Any


class MetaptError(ValueError):
    """Base class for every user-facing error; its message is a single line."""


class ConfigError(MetaptError):
    """A setting has a bad value.

    Args:
        field: dotted path of the setting, e.g. ``meta.inner_lr``.
        value: the offending value.
        reason: what is wrong with it, in a few words.
    """

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 120:
            shown = shown[:117] + "..."
        super().__init__(f"{field}={shown}: {reason}".replace("\n", " "))


class DataError(MetaptError):
    """An input file or data set cannot be used as configured."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 160:
            shown = shown[:157] + "..."
        super().__init__(f"{field}={shown}: {reason}".replace("\n", " "))


class IntegrityError(MetaptError):
    """A stored artifact does not match its recorded fingerprint."""
