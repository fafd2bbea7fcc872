"""Prefect task around ``metapt_core.ppt.ppt_pretrain`` (the PPT baseline's prompt)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import to_dict
from metapt_core.specs import PPTSpec
from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import BACKBONE_LOADER, TASK_OPTIONS, get_backbone, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage

CORE = "metapt_core.ppt:ppt_pretrain"
# The code key follows the import closure of these (tasks.core.code_identity).
ENTRIES = [CORE, BACKBONE_LOADER]


@task(name="ppt", cache_policy=no_cache(), **TASK_OPTIONS)
def ppt_task(ctx: RunContext, assets: ArtifactRef, shards: ArtifactRef) -> StageOutcome:
    """Pre-train a prompt on the whole mixed pool (a prompt folder)."""
    cfg = ctx.cfg
    # PPT reads the episode settings it shares with MetaPT, not MetaPT's outer optimiser.
    reads = PPTSpec.of(cfg)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(CORE)(shards, reads, get_backbone(cfg), out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="ppt",
        settings=to_dict(reads),
        upstream={"assets": assets, "shards": shards},
        entries=ENTRIES,
        compute=compute,
        artifacts=["."],
    )
    return execute_stage(ctx, spec)
