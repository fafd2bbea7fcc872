"""Prefect task around ``metapt_core.ppt.ppt_pretrain`` (the PPT baseline's prompt)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import InitMethod
from metapt_core.ppt import ppt_pretrain
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, get_backbone, no_cache, pretrain_on_ranks
from tasks.progress import StageProgress
from tasks.publish import publish_prompt
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="ppt", cache_policy=no_cache(), **TASK_OPTIONS)
def ppt_task(
    ctx: RunContext, assets: ArtifactRef, shards: ArtifactRef, seed: int, balanced: bool = False
) -> StageOutcome:
    """Pre-train a PPT control of pre-training seed ``seed`` (a prompt folder): the mixed
    pool, or (``balanced``) exactly MetaPT's episode rows with no inner step.

    PPT receives the episode settings it shares with MetaPT and its own section with MetaPT's
    outer optimiser filled in where unset.
    """
    cfg = ctx.cfg
    init = InitMethod.PPT_BALANCED if balanced else InitMethod.PPT
    stage = plan.pretrain_plan(cfg, init, seed, assets, shards)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        if cfg.distributed.nproc_per_node > 1:  # torchrun ranks, the same prompt
            seeded = cfg.with_pretrain_seed(seed)
            return core_output(pretrain_on_ranks(seeded, shards, out_dir, init.value, progress))
        result = ppt_pretrain(
            shards, stage.spec, get_backbone(cfg), out_dir, progress=progress, balanced=balanced
        )
        return core_output(result)

    spec = StageSpec.of(
        stage,
        compute,
        artifacts=["."],
        run_name=f"{init.value}-p{seed}",
        params={"pretrain_seed": seed, "control": "balanced" if balanced else "pool"},
    )
    outcome = execute_stage(ctx, spec)
    publish_prompt(ctx.tracker, outcome, spec.run_name)  # curves, and the prompt as a model
    return as_state(outcome)
