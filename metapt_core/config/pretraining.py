"""The pre-training sections: MetaPT's meta-learning, the matched PPT baseline, torchrun ranks."""

from __future__ import annotations

from dataclasses import dataclass, field

from metapt_core.config.checks import _fraction, _non_negative, _positive
from metapt_core.config.enums import Optimizer
from metapt_core.errors import ConfigError


@dataclass
class MetaConfig:
    """MetaPT meta-pretraining over the cluster tasks (MAML family)."""

    meta_steps: int = 60
    meta_batch_size: int = 4  # tasks per outer step
    support_size: int = 4  # examples per task in the support batch
    query_size: int = 4  # examples per task in the query batch (disjoint from the support)
    # Support and query class-balanced as far as a task's rows allow (like the balanced k-shot
    # sets downstream). False: rows drawn uniformly from the task, so each batch carries the
    # task's class prior (the label-prior control needs it: balanced batches erase its tasks).
    balanced_episodes: bool = True
    inner_steps: int = 1
    inner_lr: float | str = 0.3  # alpha, or "auto": chosen from inner_lr_grid on held-out clusters
    inner_lr_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
    outer_lr: float = 0.03
    outer_optimizer: Optimizer = Optimizer.ADAM
    reptile_step: float = 1.0  # Reptile: outer step is outer_lr * reptile_step * (adapted - init)
    val_every: int = 20
    val_episodes: int = 8
    # Held-out-cluster episodes of the meta-objective check (disjoint in rows from those that
    # choose alpha and the kept prompt); 0: no check.
    check_episodes: int = 16
    val_fraction: float = 0.1  # of each shard held out for validation episodes
    val_clusters: int = 0  # whole clusters held out (unseen tasks) for validation and "auto"
    keep_best: bool = False  # keep the prompt of the best validation loss, not the last
    clip_grad_norm: float = 0.0  # 0: off; else the (meta-)gradient's norm is clipped to it
    # The inner step sized to the curvature: alpha <= curvature_scale / lambda_max, where
    # lambda_max is the largest |eigenvalue| of the support loss's Hessian in the prompt (power
    # iteration on Hessian-vector products), re-estimated at the first step and every val_every
    # steps on that step's supports. 0: off (alpha as given or calibrated).
    curvature_scale: float = 0.0
    curvature_episodes: int = 2  # supports per estimate (the largest eigenvalue is kept)
    curvature_iterations: int = 8  # power-iteration steps per support
    # Trust region of each inner step: ||alpha g|| <= max_step_ratio * ||theta||. 0: off.
    max_step_ratio: float = 0.0
    # The outer rate (MetaPT's and, matched, PPT's): linear warm-up over warmup_steps, then a
    # cosine decay to final_lr_fraction * outer_lr at the last step (1.0: constant).
    warmup_steps: int = 0
    final_lr_fraction: float = 1.0
    checkpoint_every: int = 10
    # MAML/FOMAML: the meta-batch's tasks in one grouped pass (true) or one task at a time
    # (false; the same meta-gradient). Grouped keeps every task's double-backward graph alive
    # at once: about 4x a plain step's peak memory against under 1x, for no time saved on CPU.
    group_tasks: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("meta_steps", "meta_batch_size", "support_size", "query_size", "inner_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"meta.{name}", value, "must be a positive integer")
        if isinstance(self.inner_lr, str):
            if self.inner_lr != "auto":
                raise ConfigError(
                    "meta.inner_lr", self.inner_lr, "must be a positive number or auto"
                )
            if self.val_clusters <= 0:
                raise ConfigError(
                    "meta.val_clusters", self.val_clusters,
                    "must be at least 1 when meta.inner_lr=auto (alpha is chosen on held-out clusters)",
                )  # fmt: skip
        else:
            _positive("meta.inner_lr", self.inner_lr)
        if not self.inner_lr_grid:
            raise ConfigError("meta.inner_lr_grid", self.inner_lr_grid, "needs at least one value")
        for value in self.inner_lr_grid:
            _positive("meta.inner_lr_grid", value)
        if not isinstance(self.val_clusters, int) or self.val_clusters < 0:
            raise ConfigError("meta.val_clusters", self.val_clusters, "must be zero or more")
        _non_negative("meta.clip_grad_norm", self.clip_grad_norm)
        if not isinstance(self.check_episodes, int) or self.check_episodes < 0:
            raise ConfigError("meta.check_episodes", self.check_episodes, "must be zero or more")
        _non_negative("meta.curvature_scale", self.curvature_scale)
        _non_negative("meta.max_step_ratio", self.max_step_ratio)
        for name in ("curvature_episodes", "curvature_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"meta.{name}", value, "must be a positive integer")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.meta_steps:
            raise ConfigError(
                "meta.warmup_steps",
                self.warmup_steps,
                "must be an integer from 0 to meta_steps - 1",
            )
        if not 0 < self.final_lr_fraction <= 1:
            raise ConfigError("meta.final_lr_fraction", self.final_lr_fraction, "must be in (0, 1]")
        _positive("meta.outer_lr", self.outer_lr)
        _positive("meta.reptile_step", self.reptile_step)
        _non_negative("meta.val_every", self.val_every)
        _positive("meta.checkpoint_every", self.checkpoint_every)
        _fraction("meta.val_fraction", self.val_fraction)


@dataclass
class PPTConfig:
    """PPT baseline: the same pool as one mixed task, matched to MetaPT by construction.

    Every setting left unset is MetaPT's: ``steps`` 0 is ``meta.meta_steps``, ``batch_size`` 0
    is ``meta.meta_batch_size * (support_size + query_size)`` (the rows of a meta-batch), an
    unset ``lr`` / ``optimizer`` is ``meta.outer_lr`` / ``meta.outer_optimizer``.
    """

    steps: int = 0
    batch_size: int = 0  # 0: matched (see above)
    lr: float | None = None  # None: meta.outer_lr
    optimizer: Optimizer | None = None  # None: meta.outer_optimizer

    def __post_init__(self) -> None:
        _non_negative("ppt.steps", self.steps)
        _non_negative("ppt.batch_size", self.batch_size)
        if self.lr is not None:
            _positive("ppt.lr", self.lr)

    def matched(self, meta: MetaConfig) -> PPTConfig:
        """This section with every unset setting taken from ``meta`` (steps, rows, lr, optimiser)."""
        return PPTConfig(
            steps=self.steps or meta.meta_steps,
            batch_size=self.batch_size
            or meta.meta_batch_size * (meta.support_size + meta.query_size),
            lr=meta.outer_lr if self.lr is None else self.lr,
            optimizer=meta.outer_optimizer if self.optimizer is None else self.optimizer,
        )


@dataclass
class DistributedConfig:
    """How the pre-training stages (MetaPT and PPT) run: one process, or ``torchrun`` ranks.

    With ``nproc_per_node`` > 1 the stage launches ``torchrun --standalone`` on this machine:
    each rank takes ``tasks[rank::N]`` of every meta-batch and the gradients are all-reduced
    (NCCL with a GPU per rank, else gloo), so N ranks give the prompt of one process up to float
    summation order (with Adam, whose first steps are about ``lr * sign(g)``, a component whose
    gradient is at rounding level may move by ``lr`` either way). Not part of any stage key: a
    stored prompt is served whatever N is. A dead rank ends the group, which is relaunched
    ``max_restarts`` times and resumes from the last checkpoint.
    """

    nproc_per_node: int = 1
    max_restarts: int = 1  # relaunches of the rank group after a rank dies (each resumes)

    def __post_init__(self) -> None:
        _positive("distributed.nproc_per_node", self.nproc_per_node)
        _non_negative("distributed.max_restarts", self.max_restarts)
