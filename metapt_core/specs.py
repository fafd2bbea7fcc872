"""What each stage reads: the typed specs its core function receives and its cache key hashes.

A stage's core function takes a spec built from the :class:`PipelineConfig` by ``Spec.of(cfg)``
and reads settings only through it; the orchestration layer hashes the same spec object into the
stage's key (``to_dict(spec)``). A setting is therefore part of a stage's identity exactly when
the stage can read it: a new field in a section a spec holds is keyed without anything else to
touch, and a spec that leaves a field out (PPT does not hold MetaPT's outer optimiser) makes any
read of it an ``AttributeError`` rather than a stale cache hit.

Specs mirror the attribute names of :class:`PipelineConfig` (``spec.meta``, ``spec.prompt``,
``spec.pool``) so that the code below the core function reads them as it read the config. Core
functions take the spec only; a caller that uses ``metapt_core`` directly builds it from its
config with ``of`` (``meta_pretrain(shards, MetaSpec.of(cfg), ...)``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TypeVar

from metapt_core.config import (
    BackboneConfig,
    CleaningConfig,
    ClusterConfig,
    EmbedConfig,
    FewShotConfig,
    InitMethod,
    MetaConfig,
    Optimizer,
    PipelineConfig,
    PoolConfig,
    PPTConfig,
    PromptConfig,
    Protocol,
    ScoringConfig,
    TargetTaskConfig,
)

T = TypeVar("T")


def _project(cls: type[T], section: object) -> T:
    """``cls`` built from the same-named fields of ``section`` (a spec that is part of one)."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})  # type: ignore[arg-type]


@dataclass(frozen=True)
class PoolSpec:
    """Ingestion of the pre-training pool: its sources, classes, sampling, and the cleaning."""

    pool: PoolConfig
    cleaning: CleaningConfig

    @classmethod
    def of(cls, cfg: PipelineConfig | PoolSpec) -> PoolSpec:
        return cfg if isinstance(cfg, PoolSpec) else cls(cfg.pool, cfg.cleaning)


@dataclass(frozen=True)
class TasksSpec:
    """Ingestion of the downstream tasks: every task's sources and split, and the cleaning."""

    tasks: list[TargetTaskConfig]
    cleaning: CleaningConfig

    @classmethod
    def of(cls, cfg: PipelineConfig | TasksSpec) -> TasksSpec:
        return cfg if isinstance(cfg, TasksSpec) else cls(list(cfg.tasks), cfg.cleaning)


@dataclass(frozen=True)
class EmbedSpec:
    """Sentence embedding of the pool."""

    embed: EmbedConfig

    @classmethod
    def of(cls, cfg: PipelineConfig) -> EmbedSpec:
        return cls(cfg.embed)


@dataclass(frozen=True)
class ClusterSpec:
    """Clustering: the cluster section, the pool's classes, and the rows a cluster needs per
    class (``cluster.min_rows_per_class``, or ``meta.support_size + meta.query_size``)."""

    cluster: ClusterConfig
    classes: list[str]
    min_rows_per_class: int

    @classmethod
    def of(cls, cfg: PipelineConfig | ClusterSpec) -> ClusterSpec:
        if isinstance(cfg, ClusterSpec):
            return cfg
        return cls(cfg.cluster, list(cfg.pool.classes), cfg.min_rows_per_class())


@dataclass(frozen=True)
class PoolFormat:
    """How pool rows are posed to the model in pre-training: classes, template, label words."""

    classes: list[str]
    template: str
    verbalizer: list[str]

    @classmethod
    def of(cls, pool: PoolConfig) -> PoolFormat:
        return cls(list(pool.classes), pool.template, list(pool.verbalizer))


@dataclass(frozen=True)
class EpisodeSettings:
    """The part of ``meta`` that PPT reads: its rows, held-out clusters, validation episodes,
    adaptation, selection and clipping are MetaPT's. MetaPT's outer optimiser is not here: PPT
    receives it resolved into its own section (:meth:`PPTConfig.matched`), so an explicit
    ``ppt.lr`` keeps PPT stored when ``meta.outer_lr`` changes."""

    meta_steps: int
    meta_batch_size: int
    support_size: int
    query_size: int
    balanced_episodes: bool
    inner_steps: int
    inner_lr: float | str
    inner_lr_grid: list[float]
    val_every: int
    val_episodes: int
    val_fraction: float
    val_clusters: int
    keep_best: bool
    clip_grad_norm: float
    max_step_ratio: float
    warmup_steps: int
    final_lr_fraction: float
    checkpoint_every: int
    seed: int

    @classmethod
    def of(cls, meta: MetaConfig) -> EpisodeSettings:
        return _project(cls, meta)


@dataclass(frozen=True)
class MetaSpec:
    """MetaPT meta-pretraining: the meta section, the prompt, the pool format, the model."""

    meta: MetaConfig
    prompt: PromptConfig
    pool: PoolFormat
    backbone: BackboneConfig
    scoring: ScoringConfig

    @classmethod
    def of(cls, cfg: PipelineConfig | MetaSpec) -> MetaSpec:
        if isinstance(cfg, MetaSpec):
            return cfg
        return cls(cfg.meta, cfg.prompt, PoolFormat.of(cfg.pool), cfg.backbone, cfg.scoring)


@dataclass(frozen=True)
class PPTSpec:
    """PPT pre-training: the ppt section, the shared episode settings, prompt, format, model."""

    ppt: PPTConfig
    meta: EpisodeSettings
    prompt: PromptConfig
    pool: PoolFormat
    backbone: BackboneConfig
    scoring: ScoringConfig

    @classmethod
    def of(cls, cfg: PipelineConfig | PPTSpec) -> PPTSpec:
        if isinstance(cfg, PPTSpec):
            return cfg
        return cls(
            cfg.ppt.matched(cfg.meta),
            EpisodeSettings.of(cfg.meta),
            cfg.prompt,
            PoolFormat.of(cfg.pool),
            cfg.backbone,
            cfg.scoring,
        )

    def ppt_budget(self) -> tuple[int, int]:
        """(steps, batch size): ``ppt.steps`` x ``ppt.batch_size``, each 0 meaning matched to
        MetaPT's ``meta_steps`` x ``meta_batch_size * (support_size + query_size)``."""
        m = self.meta
        batch = self.ppt.batch_size or m.meta_batch_size * (m.support_size + m.query_size)
        return self.ppt.steps or m.meta_steps, batch


@dataclass(frozen=True)
class FewShotTuning:
    """How one few-shot split is tuned and scored: ``fewshot`` without the grid's lists of shots
    and seeds (each group receives its own), so adding a seed leaves existing groups cached."""

    dev_per_class: int
    steps: int
    batch_size: int
    lr: float
    optimizer: Optimizer
    eval_every: int
    eval_batch_size: int

    @classmethod
    def of(cls, fewshot: FewShotConfig) -> FewShotTuning:
        return _project(cls, fewshot)


@dataclass(frozen=True)
class InnerRule:
    """The meta-learner's own adaptation, as a few-shot protocol: ``steps`` full-batch SGD
    steps at ``lr`` (a number, or ``"auto"``: the alpha each MetaPT prompt records)."""

    lr: float | str
    steps: int


@dataclass(frozen=True)
class EvalSpec:
    """One evaluation group: its task (only that one), its pre-training seed, the tuning and
    its protocols, the prompt, which initialisations, whether prompts train in one batched pass,
    whether this group also scores the zero-shot reference and the untuned prompts, the model."""

    task: TargetTaskConfig
    fewshot: FewShotTuning
    prompt: PromptConfig
    inits: list[InitMethod]
    batch_prompts: bool
    zero_shot: bool
    backbone: BackboneConfig
    scoring: ScoringConfig
    pretrain_seed: int = 0
    protocols: list[Protocol] = field(default_factory=lambda: [Protocol.FEWSHOT])
    inner: InnerRule = field(default_factory=lambda: InnerRule(0.3, 1))
    untuned: bool = False

    @classmethod
    def of(
        cls, cfg: PipelineConfig, task: str, shots: int, seed: int, pretrain_seed: int | None = None
    ) -> EvalSpec:
        """The spec of group (``task``, ``shots``, ``seed``, ``pretrain_seed``); the zero-shot
        reference is scored in the first group of each task, the untuned prompts in the first
        (shots, seed) group of each (task, pre-training seed): neither depends on the split."""
        from metapt_core.errors import ConfigError

        found = [t for t in cfg.tasks if t.name == task]
        if not found:
            known = ", ".join(t.name for t in cfg.tasks)
            raise ConfigError("tasks", task, f"no such task (known: {known})")
        pseeds = cfg.pretrain_seeds
        pseed = pseeds[0] if pretrain_seed is None else pretrain_seed
        first = shots == cfg.fewshot.shots[0] and seed == cfg.fewshot.seeds[0]
        return cls(
            found[0],
            FewShotTuning.of(cfg.fewshot),
            cfg.prompt,
            list(cfg.grid.inits),
            cfg.grid.batch_prompts,
            cfg.grid.zero_shot and first and pseed == pseeds[0],
            cfg.backbone,
            cfg.scoring,
            pseed,
            list(cfg.grid.protocols),
            InnerRule(cfg.meta.inner_lr, cfg.meta.inner_steps),
            cfg.grid.untuned and first,
        )

    @property
    def tasks(self) -> list[TargetTaskConfig]:
        """The group's task, as the one-item list code that looks a task up by name reads."""
        return [self.task]


@dataclass(frozen=True)
class ReportGrid:
    """What the report reads of the grid: the order of initialisations and the intervals."""

    inits: list[InitMethod]
    bootstrap: int
    ci_level: float


@dataclass(frozen=True)
class ReportSpec:
    """The report: the grid's order and interval settings, and the backbone's name (its title)."""

    grid: ReportGrid
    backbone_name: str = field(default="")

    @classmethod
    def of(cls, cfg: PipelineConfig | ReportSpec) -> ReportSpec:
        if isinstance(cfg, ReportSpec):
            return cfg
        grid = ReportGrid(list(cfg.grid.inits), cfg.grid.bootstrap, cfg.grid.ci_level)
        return cls(grid, cfg.backbone.name_or_path)
