"""How the flows are served: ``metapt/full-pipeline`` and one deployment per stage."""

from flows import env as _env  # noqa: F401  (environment defaults before prefect is imported)
