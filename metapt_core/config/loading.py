"""Resolving a configuration: a bundled profile, then a user YAML file, then overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metapt_core.config.coercion import deep_merge, from_dict
from metapt_core.config.overrides import apply_override
from metapt_core.config.pipeline import PipelineConfig
from metapt_core.config.yaml_text import load_yaml
from metapt_core.errors import ConfigError

PROFILES = ("smoke", "default", "study", "paper", "control")


def profile_data(name: str) -> dict[str, Any]:
    """The raw mapping of a bundled profile (``metapt_core/profiles/NAME.yaml``)."""
    if name not in PROFILES:
        raise ConfigError("profile", name, f"unknown profile (known: {', '.join(PROFILES)})")
    text = resources.files("metapt_core").joinpath("profiles", f"{name}.yaml").read_text("utf-8")
    data = load_yaml(text) or {}
    data["profile"] = name
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A user YAML file as a mapping, with a one-line error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", str(path), "file not found")
    try:
        data = load_yaml(p.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--config", str(path), f"is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "must hold a mapping of settings")
    return data


def load_config(
    profile: str = "default",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """Resolve profile, then YAML file, then ``key=value`` overrides, into a checked config."""
    data = profile_data(profile)
    if config_file:
        data = deep_merge(data, read_yaml(config_file))
    for text in overrides or []:
        data = apply_override(data, text)
    data["profile"] = profile
    return from_dict(PipelineConfig, data)
