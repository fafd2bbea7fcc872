"""Prefect tasks around the pre-training stages: ``metapt_core.ppt.ppt_pretrain`` (PPT and its
class-balanced control) and ``metapt_core.meta.meta_pretrain`` (one run per meta-learner).

Both stages make a prompt folder the same way (:func:`pretrain_stage`): on torchrun ranks when
``distributed.nproc_per_node`` > 1, else in this process on the shared backbone; the prompt's
curves and the prompt itself go to the stage's MLflow run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import task

from metapt_core.config import InitMethod, MetaAlgorithm
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, get_backbone, no_cache, pretrain_on_ranks
from tasks.plan import StagePlan
from tasks.progress import StageProgress
from tasks.publish import publish_prompt
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

Train = Callable[[Any, Path, StageProgress], Any]  # (backbone, out_dir, progress) -> result


@task(name="ppt", cache_policy=no_cache(), **TASK_OPTIONS)
def ppt_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Pre-train a PPT control (a prompt folder; :func:`tasks.plan.ppt_plan`): the mixed pool,
    or (``balanced``) exactly MetaPT's episode rows with no inner step.

    PPT receives the episode settings it shares with MetaPT and its own section with MetaPT's
    outer optimiser filled in where unset.
    """
    balanced = bool(stage.extra["balanced"])
    init = InitMethod.PPT_BALANCED if balanced else InitMethod.PPT
    shards = stage.upstream["shards"]

    def train(model: Any, out_dir: Path, progress: StageProgress) -> Any:
        return ppt_pretrain(
            shards, stage.spec, model, out_dir, progress=progress, balanced=balanced
        )

    control = {"control": "balanced" if balanced else "pool"}
    return pretrain_stage(ctx, label, stage, init.value, train, control)


@task(name="meta-pretrain", cache_policy=no_cache(), **TASK_OPTIONS)
def meta_pretrain_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Meta-learn a prompt initialisation over the cluster shards (a prompt folder;
    :func:`tasks.plan.meta_pretrain_plan`)."""
    algorithm = MetaAlgorithm(stage.extra["algorithm"])
    shards = stage.upstream["shards"]

    def train(model: Any, out_dir: Path, progress: StageProgress) -> Any:
        return meta_pretrain(shards, stage.spec, algorithm, model, out_dir, progress=progress)

    params = {"algorithm": algorithm.value}
    return pretrain_stage(ctx, label, stage, algorithm.value, train, params)


def pretrain_stage(
    ctx: RunContext,
    label: str,
    stage: StagePlan,
    kind: str,
    train: Train,
    params: dict[str, Any],
) -> Any:
    """Run one pre-training stage through the store: ``train`` on the shared backbone, or the
    ``kind`` of :mod:`metapt_core.meta.__main__` on torchrun ranks (the same prompt); then the
    prompt's curves and the prompt as a model on its MLflow run (``label``)."""
    cfg = ctx.cfg
    seed = stage.spec.meta.seed

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        if cfg.distributed.nproc_per_node > 1:
            seeded = cfg.with_pretrain_seed(seed)
            shards = stage.upstream["shards"]
            return core_output(pretrain_on_ranks(seeded, shards, out_dir, kind, progress))
        return core_output(train(get_backbone(cfg), out_dir, progress))

    spec = StageSpec.of(
        stage,
        compute,
        artifacts=["."],
        run_name=label,
        params={"pretrain_seed": seed, **params},
    )
    outcome = execute_stage(ctx, spec)
    publish_prompt(ctx.tracker, outcome, label)  # curves, and the prompt as a model
    return as_state(outcome)
