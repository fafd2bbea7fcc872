"""Resolve a core function by name, lazily, with an optional override module for tests."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# A module whose attributes replace core functions of the same name (tests, dry runs).
OVERRIDE_ENV = "METAPT_CORE_OVERRIDE"


def core(qualname: str) -> Callable[..., Any]:
    """The function ``module:attr`` (e.g. ``metapt_core.clustering:cluster_pool``).

    When ``$METAPT_CORE_OVERRIDE`` names a module that defines ``attr``, that one is used: this
    is how the orchestration is exercised before (or without) the real core stages.
    """
    module_name, attr = qualname.split(":")
    override = os.environ.get(OVERRIDE_ENV, "")
    if override:
        replacement = getattr(importlib.import_module(override), attr, None)
        if replacement is not None:
            return replacement  # type: ignore[no-any-return]
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
    """sha256 over the source files of ``modules`` (and the override module, if set).

    A stage's cache key includes it, so editing the code of a stage recomputes that stage.
    A module that does not exist yet hashes as its name.
    """
    names = list(modules)
    override = os.environ.get(OVERRIDE_ENV, "")
    if override:
        names.append(override)
    digest = hashlib.sha256()
    for name in sorted(set(names)):
        digest.update(name.encode() + b"\0")
        try:
            files = _source_files(name)
        except (ImportError, ValueError):
            files = []
        for file in files:
            digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()
