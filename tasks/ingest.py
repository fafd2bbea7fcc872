"""Prefect tasks around ``metapt_core.data.ingest_pool`` and ``ingest_tasks``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.data import ingest_pool, ingest_tasks
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, asset_paths, no_cache
from tasks.plan import StagePlan
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="ingest-pool", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_pool_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Read, clean and sample the pre-training pool into ``pool.parquet``
    (:func:`tasks.plan.ingest_pool_plan`)."""

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = ingest_pool(stage.spec, asset_paths(ctx.cfg), out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute, run_name=label)))


@task(name="ingest-tasks", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_tasks_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Read the downstream tasks into ``tasks/<task>/{train,test}.parquet``
    (:func:`tasks.plan.ingest_tasks_plan`)."""
    pool = stage.upstream["pool"]

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = ingest_tasks(stage.spec, asset_paths(ctx.cfg), pool, out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute, run_name=label)))
