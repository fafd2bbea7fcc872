"""Prefect tasks around ``metapt_core.data.ingest_pool`` and ``ingest_tasks``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prefect import task

from metapt_core.config import PipelineConfig, SourceConfig, SourceFormat
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, asset_paths, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage, settings_of

POOL_CORE = "metapt_core.data:ingest_pool"
TASKS_CORE = "metapt_core.data:ingest_tasks"
MODULES = ["metapt_core.data"]
# Sources read from the user's files: their content is part of the ingestion's key.
FILE_FORMATS = (SourceFormat.CSV, SourceFormat.JSON, SourceFormat.PARQUET, SourceFormat.DISK)


def source_refs(sources: Iterable[SourceConfig | None]) -> dict[str, ArtifactRef]:
    """Content fingerprints of the user's data files (builtin sources are in the assets' ref).

    Editing a file in place then recomputes its ingestion and whatever follows from it.
    """
    refs: dict[str, ArtifactRef] = {}
    for src in sources:
        if src is None or SourceFormat(src.format) not in FILE_FORMATS:
            continue
        path = Path(src.path).expanduser()
        if path.exists():  # a missing file fails in the core with its own message
            refs[f"source:{src.name}:{src.path}"] = ArtifactRef.of(path)
    return refs


def task_sources(cfg: PipelineConfig) -> list[SourceConfig | None]:
    return [source for spec in cfg.tasks for source in (spec.train, spec.test)]


@task(name="ingest-pool", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_pool_task(ctx: RunContext, assets: ArtifactRef) -> StageOutcome:
    """Read, clean and sample the pre-training pool into ``pool.parquet``."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        return core_output(core(POOL_CORE)(cfg, asset_paths(cfg), out_dir, progress=progress))

    spec = StageSpec(
        stage="ingest-pool",
        settings=settings_of(cfg, ["seed", "pool", "cleaning"]),
        upstream={"assets": assets, **source_refs(cfg.pool.sources)},
        modules=MODULES,
        compute=compute,
    )
    return execute_stage(ctx, spec)


@task(name="ingest-tasks", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_tasks_task(ctx: RunContext, assets: ArtifactRef, pool: ArtifactRef) -> StageOutcome:
    """Read the downstream tasks into ``tasks/<task>/{train,test}.parquet``."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(TASKS_CORE)(cfg, asset_paths(cfg), pool, out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="ingest-tasks",
        settings=settings_of(cfg, ["seed", "tasks", "cleaning"]),
        upstream={"assets": assets, "pool": pool, **source_refs(task_sources(cfg))},
        modules=MODULES,
        compute=compute,
    )
    return execute_stage(ctx, spec)
