"""Prefect task around ``metapt_core.clustering.cluster_pool``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import to_dict
from metapt_core.specs import ClusterSpec
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

CORE = "metapt_core.clustering:cluster_pool"


@task(name="cluster", cache_policy=no_cache(), **TASK_OPTIONS)
def cluster_task(ctx: RunContext, pool: ArtifactRef, embed: ArtifactRef) -> StageOutcome:
    """Cluster the embedded pool into auxiliary-task shards (+ diagnostics)."""
    cfg = ctx.cfg
    reads = ClusterSpec.of(cfg)  # what the core receives is what the key hashes

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        return core_output(core(CORE)(pool, embed, reads, out_dir, progress=progress))

    spec = StageSpec(
        stage="cluster",
        settings=to_dict(reads),
        upstream={"pool": pool, "embed": embed},
        entries=[CORE],
        compute=compute,
        artifacts=["diagnostics", "manifest.json", "shards/manifest.json", "shards/diagnostics"],
        params={"n_clusters": cfg.cluster.n_clusters, "method": cfg.cluster.method.value},
    )
    return execute_stage(ctx, spec)
