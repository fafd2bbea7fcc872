"""YAML text of a configuration: read with YAML 1.2 floats (``1e-3``), written back resolved."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import yaml

from metapt_core.config.coercion import to_dict

if TYPE_CHECKING:
    from metapt_core.config.pipeline import PipelineConfig


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` and ``5E+2`` are numbers, not strings
    (YAML 1.1, which PyYAML follows, needs a dot in a float)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
# The float resolver above also matches plain integers: keep them integers (checked first).
_Loader.yaml_implicit_resolvers = {
    first: sorted(resolvers, key=lambda r: r[0] != "tag:yaml.org,2002:int")
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 floats (``1e-3``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def dump_yaml(cfg: PipelineConfig) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
