"""Prefect flows chaining the stage tasks; ``flows.cli`` is the ``metapt`` command."""

from flows import env as _env  # noqa: F401  (environment defaults before prefect is imported)
