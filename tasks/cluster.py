"""Prefect task around ``metapt_core.clustering.cluster_pool``."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.clustering import cluster_pool
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, no_cache
from tasks.plan import StagePlan
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="cluster", cache_policy=no_cache(), **TASK_OPTIONS)
def cluster_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Cluster the embedded pool into auxiliary-task shards (+ diagnostics)
    (:func:`tasks.plan.cluster_plan`)."""
    pool, embedded = stage.upstream["pool"], stage.upstream["embed"]

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        return core_output(cluster_pool(pool, embedded, stage.spec, out_dir, progress=progress))

    spec = StageSpec.of(
        stage,
        compute,
        artifacts=["diagnostics", "manifest.json", "shards/manifest.json", "shards/diagnostics"],
        run_name=label,
        params={
            "n_clusters": stage.spec.cluster.n_clusters,
            "method": stage.spec.cluster.method.value,
        },
    )
    return as_state(execute_stage(ctx, spec))
