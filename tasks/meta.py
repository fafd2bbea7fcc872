"""Prefect task around ``metapt_core.meta.meta_pretrain`` (one run per meta-learner)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import MetaAlgorithm
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, get_backbone, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage, settings_of

CORE = "metapt_core.meta:meta_pretrain"
MODULES = ["metapt_core.meta", "metapt_core.lm", "metapt_core.scoring", "metapt_core.prompt"]
SETTINGS = [
    "seed",
    "meta",
    "backbone",
    "prompt",
    "scoring",
    "pool.classes",
    "pool.template",
    "pool.verbalizer",
]


@task(name="meta-pretrain", cache_policy=no_cache(), **TASK_OPTIONS)
def meta_pretrain_task(
    ctx: RunContext, algorithm: MetaAlgorithm, assets: ArtifactRef, shards: ArtifactRef
) -> StageOutcome:
    """Meta-learn a prompt initialisation over the cluster shards (a prompt folder)."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(CORE)(shards, cfg, algorithm, get_backbone(cfg), out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="meta-pretrain",
        settings={**settings_of(cfg, SETTINGS), "algorithm": algorithm.value},
        upstream={"assets": assets, "shards": shards},
        modules=MODULES,
        compute=compute,
        artifacts=["."],
        run_name=f"meta-pretrain-{algorithm.value}",
        params={"algorithm": algorithm.value},
    )
    return execute_stage(ctx, spec)
