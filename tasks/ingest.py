"""Prefect tasks around ``metapt_core.data.ingest_pool`` and ``ingest_tasks``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.data import ingest_pool, ingest_tasks
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, asset_paths, no_cache
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="ingest-pool", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_pool_task(ctx: RunContext, assets: ArtifactRef) -> StageOutcome:
    """Read, clean and sample the pre-training pool into ``pool.parquet``."""
    cfg = ctx.cfg
    stage = plan.ingest_pool_plan(cfg, assets)  # what the core receives is what the key hashes

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = ingest_pool(stage.spec, asset_paths(cfg), out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute)))


@task(name="ingest-tasks", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_tasks_task(ctx: RunContext, assets: ArtifactRef, pool: ArtifactRef) -> StageOutcome:
    """Read the downstream tasks into ``tasks/<task>/{train,test}.parquet``."""
    cfg = ctx.cfg
    stage = plan.ingest_tasks_plan(cfg, assets, pool)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = ingest_tasks(stage.spec, asset_paths(cfg), pool, out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute)))
