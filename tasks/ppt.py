"""Prefect task around ``metapt_core.ppt.ppt_pretrain`` (the PPT baseline's prompt)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.store import ArtifactRef
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, get_backbone, no_cache
from tasks.core import core
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, core_output, execute_stage, settings_of

CORE = "metapt_core.ppt:ppt_pretrain"
MODULES = [
    "metapt_core.ppt",
    "metapt_core.meta",
    "metapt_core.lm",
    "metapt_core.scoring",
    "metapt_core.prompt",
]
# PPT's budget is matched to MetaPT's and it is validated on the same episodes with the same
# adaptation, so it reads those parts of the meta section, and only those: the outer optimiser's
# settings (meta.outer_lr, meta.outer_optimizer, meta.reptile_step) do not change PPT.
SETTINGS = [
    "seed",
    "ppt",
    "meta.meta_steps",
    "meta.meta_batch_size",
    "meta.support_size",
    "meta.query_size",
    "meta.inner_steps",
    "meta.inner_lr",
    "meta.val_every",
    "meta.val_episodes",
    "meta.val_fraction",
    "meta.seed",
    "backbone",
    "prompt",
    "scoring",
    "pool.classes",
    "pool.template",
    "pool.verbalizer",
]


@task(name="ppt", cache_policy=no_cache(), **TASK_OPTIONS)
def ppt_task(ctx: RunContext, assets: ArtifactRef, shards: ArtifactRef) -> StageOutcome:
    """Pre-train a prompt on the whole mixed pool (a prompt folder)."""
    cfg = ctx.cfg

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        result = core(CORE)(shards, cfg, get_backbone(cfg), out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec(
        stage="ppt",
        settings=settings_of(cfg, SETTINGS),
        upstream={"assets": assets, "shards": shards},
        modules=MODULES,
        compute=compute,
        artifacts=["."],
    )
    return execute_stage(ctx, spec)
