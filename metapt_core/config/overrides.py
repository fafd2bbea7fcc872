"""``--set key=value`` overrides: a dotted path parsed, its YAML value applied to plain data."""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

from metapt_core.config.coercion import deep_merge
from metapt_core.config.yaml_text import load_yaml
from metapt_core.errors import ConfigError

_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<item>[^\[\]]+)\])?$")


def _override_path(text: str, key: str) -> list[Any]:
    """``tasks[mr].max_test`` -> ``["tasks", "mr"(item), "max_test"]``; ``tasks.0.x`` works too.

    Items are returned as ``("item", selector)`` tuples so that a setting named like a number is
    never taken for an index.
    """
    path: list[Any] = []
    for part in key.split("."):
        if part.isdigit() and path:
            path.append(("item", part))
            continue
        match = _SEGMENT.match(part)
        if match is None:
            raise ConfigError("--set", text, f"{part!r} is not a setting name (or name[item])")
        path.append(match["name"])
        if match["item"] is not None:
            path.append(("item", match["item"].strip()))
    return path


def _select(items: list[Any], selector: str, where: str, text: str) -> int:
    """Index of the list item ``selector`` names: an index, or the item whose ``name`` it is."""
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if selector in names:
        return names.index(selector)
    if selector.lstrip("-").isdigit() and -len(items) <= int(selector) < len(items):
        return int(selector) % len(items)
    known = ", ".join(str(n) for n in names if n is not None) or f"indices 0..{len(items) - 1}"
    raise ConfigError("--set", text, f"{where} has no item {selector!r} (items: {known})")


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    """``data`` with one ``key=value`` override applied (the value is read as YAML 1.2).

    ``key`` is a dotted path (``meta.inner_lr=1e-3``); a list item is chosen by its ``name`` or
    its index, ``tasks[mr].max_test=50`` or ``tasks.0.max_test=50``. Other items are kept.

    Raises:
        ConfigError: a malformed override, or a list item that does not exist.
    """
    if "=" not in text:
        raise ConfigError("--set", text, "must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", text, "must look like section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = _override_path(text, key)
    merged = copy.deepcopy(data)
    node: Any = merged
    where = ""
    for position, part in enumerate(path):
        last = position == len(path) - 1
        if isinstance(part, tuple):
            if not isinstance(node, list):
                raise ConfigError("--set", text, f"{where} is not a list")
            index = _select(node, part[1], where, text)
            where = f"{where}[{part[1]}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError("--set", text, f"{where} is not a section")
        where = f"{where}.{part}" if where else part
        if last:
            current = node.get(part)
            node[part] = (
                deep_merge(current, value)
                if isinstance(current, dict) and isinstance(value, dict)
                else value
            )
        else:
            node = node.setdefault(part, {})
    return merged
