"""Every setting is read by some code: a field that nothing reads is a setting that lies.

Walks every field of :class:`PipelineConfig` and its sections and looks, in the project's source
(``metapt_core``, ``tasks``, ``flows``, ``deployments``), for an attribute read of that field
outside the config package's own checks (``__post_init__`` in ``metapt_core/config/``). A field
named the same in several sections (``seed``, ``lr``) must be read as ``<section>.<field>`` or
through a variable named after its section (``meta = cfg.meta; meta.seed``), so one section's read
does not excuse another.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import typing
from collections import Counter
from pathlib import Path

import pytest

from metapt_core import config as config_module
from metapt_core.config import PipelineConfig

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("metapt_core", "tasks", "flows", "deployments")
CONFIG_PACKAGE = ("metapt_core", "config")  # the modules whose ``__post_init__`` are own checks


def sections(top: type = PipelineConfig) -> dict[type, set[str]]:
    """Each config dataclass -> the field names it is reached by (``pipeline`` for the top)."""
    found: dict[type, set[str]] = {top: {"pipeline"}}
    todo: list[type] = [top]
    while todo:
        cls = todo.pop()
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            for arg in typing.get_args(tp) or (tp,):
                for sub in typing.get_args(arg) or (arg,):
                    if dataclasses.is_dataclass(sub) and isinstance(sub, type):
                        if sub not in found:
                            todo.append(sub)
                        found.setdefault(sub, set()).add(f.name)
    return found


def reads_in(tree: ast.AST, skip_post_init: bool = False) -> tuple[set[str], set[tuple[str, str]]]:
    """(attribute names read, (owner name, attribute) pairs) in one parsed file; with
    ``skip_post_init``, reads inside a ``__post_init__`` (a config's own checks) do not count."""
    names: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    skip: set[int] = set()
    if skip_post_init:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "__post_init__":
                skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            names.add(node.attr)
            owner = node.value
            if isinstance(owner, ast.Attribute):
                pairs.add((owner.attr, node.attr))
            elif isinstance(owner, ast.Name):
                pairs.add((owner.id, node.attr))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", "") == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            names.add(str(node.args[1].value))
    return names, pairs


def attribute_reads() -> tuple[set[str], set[tuple[str, str]]]:
    """(attribute names read, (owner name, attribute) pairs) over the project's source files."""
    names: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            own_checks = file.relative_to(ROOT).parts[: len(CONFIG_PACKAGE)] == CONFIG_PACKAGE
            file_names, file_pairs = reads_in(ast.parse(file.read_text("utf-8")), own_checks)
            names |= file_names
            pairs |= file_pairs
    return names, pairs


# Section variables as the code names them (``sc = cfg.scoring``, ``cc = cfg.cluster``).
ALIASES = {
    "cluster": {"cluster", "cc"},
    "scoring": {"scoring", "sc"},
    "fewshot": {"fewshot", "fs"},
    "tasks": {"task", "spec", "t"},
    "sources": {"source", "src", "spec"},
}


def unread_settings(
    all_sections: dict[type, set[str]], names: set[str], pairs: set[tuple[str, str]]
) -> list[str]:
    """``Class.field`` of every field that no read reaches: a field with a name of its own is
    read by any ``.name``; a name shared by sections must be read through its section's name."""
    counts = Counter(f.name for cls in all_sections for f in dataclasses.fields(cls))
    unread = []
    for cls, reached_as in all_sections.items():
        owners = {"cfg", "config"} | reached_as
        for name in reached_as:
            owners |= ALIASES.get(name, set())
        for f in dataclasses.fields(cls):
            if counts[f.name] == 1:
                ok = f.name in names
            else:
                ok = any((owner, f.name) in pairs for owner in owners)
            if not ok:
                unread.append(f"{cls.__name__}.{f.name}")
    return unread


def test_every_setting_is_read() -> None:
    unread = unread_settings(sections(), *attribute_reads())
    assert not unread, f"settings that no code reads: {unread}"


# A made-up config for the check of the check: two sections share ``lr`` and ``seed``.
@dataclasses.dataclass
class _Inner:
    lr: float = 0.1
    seed: int = 0
    depth: int = 1


@dataclasses.dataclass
class _Outer:
    lr: float = 0.1
    seed: int = 0


@dataclasses.dataclass
class _Top:
    inner: _Inner
    outer: _Outer
    width: int = 2
    height: int = 3

    def __post_init__(self) -> None:
        if self.height < 0:
            raise ValueError("height")


USES = """
def run(cfg):
    inner = cfg.inner
    return inner.seed + cfg.outer.lr + getattr(cfg, "width")
"""


def test_the_walk_finds_an_unread_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a field that nothing reads is reported."""
    assert sections(_Top) == {_Top: {"pipeline"}, _Inner: {"inner"}, _Outer: {"outer"}}
    # a source tree of the made-up config (a module of metapt_core/config/) and one user
    package = tmp_path / "metapt_core" / "config"
    package.mkdir(parents=True)
    (package / "sections.py").write_text(inspect.getsource(_Top), "utf-8")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "use.py").write_text(USES, "utf-8")
    with monkeypatch.context() as patched:
        patched.setitem(globals(), "ROOT", tmp_path)
        names, pairs = attribute_reads()
    assert {("inner", "seed"), ("outer", "lr"), ("cfg", "inner")} <= pairs and "width" in names
    # inner.lr and outer.seed: their names are read, but through the other section's name;
    # depth: read nowhere; height: read only in the config's own checks (__post_init__)
    expected = ["_Inner.depth", "_Inner.lr", "_Outer.seed", "_Top.height"]
    assert sorted(unread_settings(sections(_Top), names, pairs)) == expected
    assert "height" in reads_in(ast.parse(inspect.getsource(_Top)))[0]  # outside metapt_core/config
    # the same checks in a module outside the config package are reads like any other
    (tmp_path / "tasks" / "checks.py").write_text(inspect.getsource(_Top), "utf-8")
    with monkeypatch.context() as patched:
        patched.setitem(globals(), "ROOT", tmp_path)
        elsewhere = unread_settings(sections(_Top), *attribute_reads())
    assert sorted(elsewhere) == ["_Inner.depth", "_Inner.lr", "_Outer.seed"]
    # the real walk: a read dropped from what the code reads leaves its field reported
    names, pairs = attribute_reads()
    assert "batch_prompts" in names
    assert unread_settings(sections(), names - {"batch_prompts"}, pairs) == [
        "GridConfig.batch_prompts"
    ]
    assert ("meta", "seed") in pairs
    meta_seed = {("meta", "seed"), ("cfg", "seed"), ("config", "seed")}
    assert unread_settings(sections(), names, pairs - meta_seed) == ["MetaConfig.seed"]
    assert config_module.MetaConfig in sections()
    assert sections()[config_module.SourceConfig] == {"sources", "train", "test"}
