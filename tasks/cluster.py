"""Prefect task around ``metapt_core.clustering.cluster_pool``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage, settings_of

CORE = "metapt_core.clustering:cluster_pool"
MODULES = ["metapt_core.clustering"]
# What the clustering reads besides its own section (min rows per class derives from meta).
SETTINGS = ["seed", "cluster", "pool.classes", "meta.support_size", "meta.query_size"]


@task(name="cluster", cache_policy=no_cache(), **TASK_OPTIONS)
def cluster_task(ctx: RunContext, pool: ArtifactRef, embed: ArtifactRef) -> StageOutcome:
    """Cluster the embedded pool into auxiliary-task shards (+ diagnostics)."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        return core_output(core(CORE)(pool, embed, cfg, out_dir, progress=progress))

    spec = StageSpec(
        stage="cluster",
        settings=settings_of(cfg, SETTINGS),
        upstream={"pool": pool, "embed": embed},
        modules=MODULES,
        compute=compute,
        artifacts=["diagnostics", "manifest.json", "shards/manifest.json", "shards/diagnostics"],
        params={"n_clusters": cfg.cluster.n_clusters, "method": cfg.cluster.method.value},
    )
    return execute_stage(ctx, spec)
