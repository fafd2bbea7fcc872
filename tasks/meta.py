"""Prefect task around ``metapt_core.meta.meta_pretrain`` (one run per meta-learner)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import MetaAlgorithm, to_dict
from metapt_core.specs import MetaSpec
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import BACKBONE_LOADER, TASK_OPTIONS, get_backbone, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

CORE = "metapt_core.meta:meta_pretrain"
ENTRIES = [CORE, BACKBONE_LOADER]  # their import closure is the code key


@task(name="meta-pretrain", cache_policy=no_cache(), **TASK_OPTIONS)
def meta_pretrain_task(
    ctx: RunContext, algorithm: MetaAlgorithm, assets: ArtifactRef, shards: ArtifactRef
) -> StageOutcome:
    """Meta-learn a prompt initialisation over the cluster shards (a prompt folder)."""
    cfg = ctx.cfg
    reads = MetaSpec.of(cfg)  # what the core receives is what the key hashes

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(CORE)(shards, reads, algorithm, get_backbone(cfg), out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="meta-pretrain",
        settings={**to_dict(reads), "algorithm": algorithm.value},
        upstream={"assets": assets, "shards": shards},
        entries=ENTRIES,
        compute=compute,
        artifacts=["."],
        run_name=f"meta-pretrain-{algorithm.value}",
        params={"algorithm": algorithm.value},
    )
    return execute_stage(ctx, spec)
