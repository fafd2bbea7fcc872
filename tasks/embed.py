"""Prefect task around ``metapt_core.embedding.embed_pool``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.embedding import embed_pool
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, no_cache
from tasks.plan import StagePlan
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="embed", cache_policy=no_cache(), **TASK_OPTIONS)
def embed_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Sentence-embed every pool row into ``embeddings.npy`` (+ ``row_ids.parquet``)
    (:func:`tasks.plan.embed_plan`)."""
    pool = stage.upstream["pool"]

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = embed_pool(pool, stage.spec.embed, ctx.cfg.assets_path, out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute, run_name=label)))
