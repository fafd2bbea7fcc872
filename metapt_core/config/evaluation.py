"""The evaluation sections: the few-shot protocol and the grid of initialisations."""

from __future__ import annotations

from dataclasses import dataclass, field

from metapt_core.config.checks import _fraction, _non_negative, _positive
from metapt_core.config.enums import InitMethod, Optimizer, Protocol, TaskRunner
from metapt_core.errors import ConfigError


@dataclass
class FewShotConfig:
    """The few-shot protocol: k per class, seeds, tuning budget, evaluation."""

    shots: list[int] = field(default_factory=lambda: [16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    dev_per_class: int = 0  # 0: no dev set; else dev-set model selection with k per class
    steps: int = 30
    batch_size: int = 8
    lr: float = 0.3
    optimizer: Optimizer = Optimizer.ADAM
    eval_every: int = 10  # dev evaluation period when a dev set is used
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.shots or any((not isinstance(k, int)) or k <= 0 for k in self.shots):
            raise ConfigError(
                "fewshot.shots", self.shots, "must be a non-empty list of positive integers"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                "fewshot.seeds", self.seeds, "must be a non-empty list of distinct integers"
            )
        _non_negative("fewshot.dev_per_class", self.dev_per_class)
        _positive("fewshot.steps", self.steps)
        _positive("fewshot.batch_size", self.batch_size)
        _positive("fewshot.lr", self.lr)
        _positive("fewshot.eval_every", self.eval_every)
        _positive("fewshot.eval_batch_size", self.eval_batch_size)


@dataclass
class GridConfig:
    """The evaluation grid: which initialisations, and how cells are run."""

    inits: list[InitMethod] = field(
        default_factory=lambda: [
            InitMethod.RANDOM,
            InitMethod.SAMPLE_VOCAB,
            InitMethod.PPT,
            InitMethod.METAPT_MAML,
        ]
    )
    runner: TaskRunner = TaskRunner.THREAD
    max_workers: int = 1
    # torch threads per worker: 0 = the cores shared, max(1, cores // max_workers) (measured:
    # benchmarks/bench_grid_batching.py); METAPT_TORCH_THREADS, where set, wins
    threads_per_worker: int = 0
    dask_address: str = ""
    batch_prompts: bool = True  # train the cells of one (task, shots, seed) in one batched pass
    retries: int = 1
    zero_shot: bool = True  # score the backbone without a prompt as a reference line
    pretrain_seeds: list[int] = field(default_factory=list)  # empty: [meta.seed]
    protocols: list[Protocol] = field(default_factory=lambda: [Protocol.FEWSHOT])
    untuned: bool = True  # also score every initialisation with no tuning (once per prompt)
    bootstrap: int = 2000
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        if not self.inits:
            raise ConfigError("grid.inits", self.inits, "needs at least one initialisation")
        if len(set(self.inits)) != len(self.inits):
            raise ConfigError("grid.inits", [i.value for i in self.inits], "lists an init twice")
        if len(set(self.pretrain_seeds)) != len(self.pretrain_seeds):
            raise ConfigError("grid.pretrain_seeds", self.pretrain_seeds, "must be distinct")
        if not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(
                "grid.protocols",
                [p.value for p in self.protocols],
                "must be distinct, at least one",
            )
        _positive("grid.max_workers", self.max_workers)
        _non_negative("grid.threads_per_worker", self.threads_per_worker)
        _non_negative("grid.retries", self.retries)
        _positive("grid.bootstrap", self.bootstrap)
        _fraction("grid.ci_level", self.ci_level)
