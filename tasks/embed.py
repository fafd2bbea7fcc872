"""Prefect task around ``metapt_core.embedding.embed_pool``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import to_dict
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

CORE = "metapt_core.embedding:embed_pool"


@task(name="embed", cache_policy=no_cache(), **TASK_OPTIONS)
def embed_task(ctx: RunContext, assets: ArtifactRef, pool: ArtifactRef) -> StageOutcome:
    """Sentence-embed every pool row into ``embeddings.npy`` (+ ``row_ids.parquet``)."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(CORE)(pool, cfg.embed, cfg.assets_path, out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="embed",
        settings={"embed": to_dict(cfg.embed)},  # the core receives cfg.embed
        upstream={"assets": assets, "pool": pool},
        entries=[CORE],
        compute=compute,
    )
    return execute_stage(ctx, spec)
