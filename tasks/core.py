"""Resolve a core function by name, lazily, and fingerprint the source of core modules."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def core(qualname: str) -> Callable[..., Any]:
    """The function ``module:attr`` (e.g. ``metapt_core.clustering:cluster_pool``).

    Imported on first use, so that a task module can be imported (and a fully cached run can
    finish) without loading torch or the model code.
    """
    module_name, attr = qualname.split(":")
    return getattr(importlib.import_module(module_name), attr)  # type: ignore[no-any-return]


def _source_files(module_name: str) -> list[Path]:
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None:
        return []
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def code_version(modules: Iterable[str]) -> str:
    """sha256 over the source files of ``modules``.

    A stage's cache key includes it, so editing the code of a stage recomputes that stage.
    A module that does not exist hashes as its name.
    """
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        digest.update(name.encode() + b"\0")
        try:
            files = _source_files(name)
        except (ImportError, ValueError):
            files = []
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
