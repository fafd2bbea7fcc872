"""Errors that a user can act on: one line naming the field and the value."""

from __future__ import annotations

from typing import Any


class MetaptError(ValueError):
    """Base class for every user-facing error; its message is a single line."""


class FieldError(MetaptError):
    """A named setting or input has a bad value.

    Args:
        field: dotted path of the setting or input, e.g. ``meta.inner_lr``, ``tasks[mr].train``.
        value: the offending value (shown shortened).
        reason: what is wrong with it, in a few words.
    """

    max_shown = 120

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > self.max_shown:
            shown = shown[: self.max_shown - 3] + "..."
        super().__init__(f"{field}={shown}: {reason}".replace("\n", " "))


class ConfigError(FieldError):
    """A setting has a bad value."""


class DataError(FieldError):
    """An input file or data set cannot be used as configured."""

    max_shown = 160


class IntegrityError(MetaptError):
    """A stored artifact does not match its recorded fingerprint."""
