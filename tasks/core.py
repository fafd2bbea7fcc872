"""The code identity of a stage, computed from the code.

A stage's code identity is computed from the code, never listed by hand: the closure of project
modules that its entry points import (followed through every ``import`` statement, at module level
or inside a function, ``TYPE_CHECKING`` blocks included, with each package's ``__init__``), the
source of its task wrapper, and the versions of the third-party distributions that closure
imports (torch, transformers, scikit-learn, ...). Reading it parses source files only: nothing is
imported, so a fully cached run can decide what to compute without loading torch.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Top-level packages whose modules are followed into a closure (the rest are libraries).
PROJECT_PACKAGES = ("metapt_core",)


def project_root() -> Path:
    """The folder that holds the project packages (``metapt_core/`` and ``tasks/``)."""
    return Path(__file__).resolve().parent.parent


def module_file(name: str, root: Path) -> Path | None:
    """The source file of project module ``name`` under ``root`` (a package: its ``__init__``)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(name: str, file: Path) -> tuple[set[str], set[str]]:
    """(absolute module names, top-level library names) that ``file`` imports anywhere."""
    tree = ast.parse(file.read_bytes(), filename=str(file))
    package = name if file.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            # ``from pkg import sub`` may name a submodule: kept if that file exists.
            found.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
    project = {n for n in found if n.split(".")[0] in PROJECT_PACKAGES}
    libraries = {n.split(".")[0] for n in found if n and n.split(".")[0] not in PROJECT_PACKAGES}
    return project, libraries


def module_closure(entries: Iterable[str], root: Path | None = None) -> tuple[list[str], list[str]]:
    """(project modules, top-level third-party import names) reachable from ``entries``.

    ``entries`` are module names or ``module:attr`` strings. A module's parent packages are part
    of its closure (Python runs their ``__init__`` first). Names that are not project files
    (``from metapt_core.config import PipelineConfig`` names a class) are dropped.
    """
    root = root or project_root()
    seen: set[str] = set()
    libraries: set[str] = set()
    todo = [entry.split(":")[0] for entry in entries]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        file = module_file(name, root)
        if file is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        project, libs = _imported_names(name, file)
        todo.extend(project - seen)
        libraries |= libs
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    return sorted(seen), sorted(lib for lib in libraries if lib not in stdlib)


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return {k: sorted(set(v)) for k, v in metadata.packages_distributions().items()}


def library_versions(import_names: Iterable[str]) -> dict[str, str]:
    """``{distribution: version}`` of the installed distributions behind ``import_names``.

    An import name that no installed distribution provides (an optional dependency) is keyed as
    ``absent``, so installing it later changes the identity too.
    """
    versions: dict[str, str] = {}
    for name in import_names:
        dists = _distributions().get(name)
        if not dists:
            versions[f"import:{name}"] = "absent"
            continue
        for dist in dists:
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                versions[dist] = "absent"
    return dict(sorted(versions.items()))


@dataclass(frozen=True)
class CodeIdentity:
    """What a stage's code key is made of: its module closure, wrapper and library versions."""

    modules: tuple[str, ...]
    wrapper: str
    libraries: dict[str, str]
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "modules": list(self.modules),
            "wrapper": self.wrapper,
            "libraries": self.libraries,
            "digest": self.digest,
        }


def code_identity(
    entries: Iterable[str], wrapper: str = "", root: Path | None = None
) -> CodeIdentity:
    """sha256 over the closure of ``entries``, the wrapper module's own source, library versions.

    Editing any module the stage's core function can reach, or its task wrapper, or upgrading a
    library that closure imports, changes the digest (and so recomputes the stage).
    """
    root = root or project_root()
    modules, imports = module_closure(entries, root)
    libraries = library_versions(imports)
    digest = hashlib.sha256()
    for name in modules:
        file = module_file(name, root)
        assert file is not None  # module_closure keeps only modules with a file
        digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    wrapper_file = module_file(wrapper, root) if wrapper else None
    if wrapper_file is not None:
        digest.update(b"wrapper:" + wrapper.encode() + b"\0" + wrapper_file.read_bytes() + b"\0")
    for dist, version in libraries.items():
        digest.update(f"{dist}=={version}\0".encode())
    return CodeIdentity(tuple(modules), wrapper, libraries, digest.hexdigest())
