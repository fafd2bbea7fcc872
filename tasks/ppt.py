"""Prefect task around ``metapt_core.ppt.ppt_pretrain`` (the PPT baseline's prompt)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.ppt import ppt_pretrain
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, get_backbone, no_cache
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

CORE = plan.PPT_CORE
ENTRIES = [CORE, plan.BACKBONE_LOADER]  # their import closure is the code key


@task(name="ppt", cache_policy=no_cache(), **TASK_OPTIONS)
def ppt_task(ctx: RunContext, assets: ArtifactRef, shards: ArtifactRef) -> StageOutcome:
    """Pre-train a prompt on the whole mixed pool (a prompt folder).

    PPT receives the episode settings it shares with MetaPT, not MetaPT's outer optimiser.
    """
    cfg = ctx.cfg
    stage = plan.ppt(cfg, assets, shards)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = ppt_pretrain(shards, stage.spec, get_backbone(cfg), out_dir, progress=progress)
        return core_output(result)

    return as_state(execute_stage(ctx, StageSpec.of(stage, compute, artifacts=["."])))
