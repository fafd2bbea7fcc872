"""Every setting is read by some code: a field that nothing reads is a setting that lies.

Walks every field of :class:`PipelineConfig` and its sections and looks, in the project's source
(``metapt_core``, ``tasks``, ``flows``, ``deployments``), for an attribute read of that field
outside ``config.py``'s own checks (``__post_init__``). A field named the same in several
sections (``seed``, ``lr``) must be read as ``<section>.<field>`` or through a variable named
after its section (``meta = cfg.meta; meta.seed``), so one section's read does not excuse another.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from collections import Counter
from pathlib import Path

from metapt_core import config as config_module
from metapt_core.config import PipelineConfig

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("metapt_core", "tasks", "flows", "deployments")


def sections() -> dict[type, set[str]]:
    """Each config dataclass -> the field names it is reached by (``pipeline`` for the top)."""
    found: dict[type, set[str]] = {PipelineConfig: {"pipeline"}}
    todo: list[type] = [PipelineConfig]
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


def attribute_reads() -> tuple[set[str], set[tuple[str, str]]]:
    """(attribute names read, (owner name, attribute) pairs) over the project's source files."""
    names: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(file.read_text("utf-8"))
            skip: set[int] = set()
            if file.name == "config.py" and file.parent.name == "metapt_core":
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


# Section variables as the code names them (``sc = cfg.scoring``, ``cc = cfg.cluster``).
ALIASES = {
    "cluster": {"cluster", "cc"},
    "scoring": {"scoring", "sc"},
    "fewshot": {"fewshot", "fs"},
    "tasks": {"task", "spec", "t"},
    "sources": {"source", "src", "spec"},
}


def test_every_setting_is_read() -> None:
    names, pairs = attribute_reads()
    all_sections = sections()
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
    assert not unread, f"settings that no code reads: {unread}"


def test_the_walk_finds_an_unread_field() -> None:
    """The check itself: a field that nothing reads is reported."""
    names, _ = attribute_reads()
    assert "batch_prompts" in names and "no_such_setting_anywhere" not in names
    assert config_module.MetaConfig in sections()
    assert sections()[config_module.SourceConfig] == {"sources", "train", "test"}
