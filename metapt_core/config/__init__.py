"""Typed configuration: one dataclass per concern, one ``Enum(str)`` per choice.

A profile (``metapt_core/profiles/NAME.yaml``) is merged with an optional user YAML file and
``section.key=value`` overrides, then turned into a :class:`PipelineConfig`. Unknown keys and
bad values raise :class:`~metapt_core.errors.ConfigError` naming the field and the value.
Checks that need no I/O live in ``__post_init__``; checks that read files or models live in
:mod:`metapt_core.validate`.

Modules: ``enums`` (the choices), ``checks`` (the value checks the sections share), the sections
by concern (``data``, ``aux_tasks``, ``model``, ``pretraining``, ``evaluation``), ``pipeline``
(:class:`PipelineConfig` and its cross-section checks), ``coercion`` (plain data to and from the
dataclasses), ``yaml_text`` (YAML 1.2 in, resolved YAML out), ``overrides`` (``--set``) and
``loading`` (profile, then file, then overrides).
"""

from __future__ import annotations

from metapt_core.config.aux_tasks import ClusterConfig, EmbedConfig
from metapt_core.config.coercion import deep_merge, flatten, from_dict, to_dict
from metapt_core.config.data import CleaningConfig, PoolConfig, SourceConfig, TargetTaskConfig
from metapt_core.config.enums import (
    BackboneKind,
    ClusterMethod,
    DType,
    HdbscanSelection,
    InitMethod,
    LossKind,
    MetaAlgorithm,
    NoisePolicy,
    Optimizer,
    PromptInit,
    Protocol,
    ScoringMode,
    SmallClusterPolicy,
    SourceFormat,
    TaskRunner,
)
from metapt_core.config.evaluation import FewShotConfig, GridConfig
from metapt_core.config.loading import PROFILES, load_config, profile_data, read_yaml
from metapt_core.config.model import BackboneConfig, PromptConfig, ScoringConfig
from metapt_core.config.overrides import apply_override
from metapt_core.config.pipeline import PipelineConfig, TrackingConfig
from metapt_core.config.pretraining import DistributedConfig, MetaConfig, PPTConfig
from metapt_core.config.yaml_text import dump_yaml, load_yaml

__all__ = [
    "BackboneConfig",
    "BackboneKind",
    "CleaningConfig",
    "ClusterConfig",
    "ClusterMethod",
    "DType",
    "DistributedConfig",
    "EmbedConfig",
    "FewShotConfig",
    "GridConfig",
    "HdbscanSelection",
    "InitMethod",
    "LossKind",
    "MetaAlgorithm",
    "MetaConfig",
    "NoisePolicy",
    "Optimizer",
    "PPTConfig",
    "PROFILES",
    "PipelineConfig",
    "PoolConfig",
    "PromptConfig",
    "PromptInit",
    "Protocol",
    "ScoringConfig",
    "ScoringMode",
    "SmallClusterPolicy",
    "SourceConfig",
    "SourceFormat",
    "TaskRunner",
    "TargetTaskConfig",
    "TrackingConfig",
    "apply_override",
    "deep_merge",
    "dump_yaml",
    "flatten",
    "from_dict",
    "load_config",
    "load_yaml",
    "profile_data",
    "read_yaml",
    "to_dict",
]
