"""Prefect tasks around ``metapt_core.data.ingest_pool`` and ``ingest_tasks``."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prefect import task

from metapt_core.config import PipelineConfig, SourceConfig, SourceFormat, to_dict
from metapt_core.specs import PoolSpec, TasksSpec
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, asset_paths, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

POOL_CORE = "metapt_core.data:ingest_pool"
TASKS_CORE = "metapt_core.data:ingest_tasks"
# Sources read from the user's files: their content is part of the ingestion's key.
FILE_FORMATS = (SourceFormat.CSV, SourceFormat.JSON, SourceFormat.PARQUET, SourceFormat.DISK)


def source_refs(sources: Iterable[SourceConfig | None]) -> dict[str, ArtifactRef]:
    """Content fingerprints of the user's data files (builtin sources are in the assets' ref),
    and the resolved commit of each hub source.

    Editing a file in place then recomputes its ingestion and whatever follows from it; so does
    a hub dataset that moved on (``revision`` pins one).
    """
    from metapt_core.data.sources import hub_revision

    refs: dict[str, ArtifactRef] = {}
    for src in sources:
        if src is not None and SourceFormat(src.format) is SourceFormat.HUB:
            revision = hub_revision(src)
            refs[f"hub:{src.name}:{src.path}"] = ArtifactRef(path=src.path, sha256=revision)
            continue
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
    reads = PoolSpec.of(cfg)  # what the core receives is what the key hashes

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        return core_output(core(POOL_CORE)(reads, asset_paths(cfg), out_dir, progress=progress))

    spec = StageSpec(
        stage="ingest-pool",
        settings=to_dict(reads),
        upstream={"assets": assets, **source_refs(cfg.pool.sources)},
        entries=[POOL_CORE],
        compute=compute,
    )
    return execute_stage(ctx, spec)


@task(name="ingest-tasks", cache_policy=no_cache(), **TASK_OPTIONS)
def ingest_tasks_task(ctx: RunContext, assets: ArtifactRef, pool: ArtifactRef) -> StageOutcome:
    """Read the downstream tasks into ``tasks/<task>/{train,test}.parquet``."""
    cfg = ctx.cfg
    reads = TasksSpec.of(cfg)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(TASKS_CORE)(reads, asset_paths(cfg), pool, out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="ingest-tasks",
        settings=to_dict(reads),
        upstream={"assets": assets, "pool": pool, **source_refs(task_sources(cfg))},
        entries=[TASKS_CORE],
        compute=compute,
    )
    return execute_stage(ctx, spec)
