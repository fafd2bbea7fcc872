"""Prefect task around ``metapt_core.meta.meta_pretrain`` (one run per meta-learner)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from metapt_core.config import InitMethod, MetaAlgorithm
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, get_backbone, no_cache, pretrain_on_ranks
from tasks.progress import StageProgress
from tasks.publish import publish_prompt
from tasks.stage import RunContext, StageSpec, core_output, execute_stage


@task(name="meta-pretrain", cache_policy=no_cache(), **TASK_OPTIONS)
def meta_pretrain_task(
    ctx: RunContext, algorithm: MetaAlgorithm, assets: ArtifactRef, shards: ArtifactRef, seed: int
) -> StageOutcome:
    """Meta-learn a prompt initialisation of pre-training seed ``seed`` over the cluster
    shards (a prompt folder)."""
    cfg = ctx.cfg
    stage = plan.pretrain_plan(cfg, InitMethod(f"metapt_{algorithm.value}"), seed, assets, shards)

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict]:
        if cfg.distributed.nproc_per_node > 1:  # torchrun ranks, the same prompt
            seeded = cfg.with_pretrain_seed(seed)
            return core_output(
                pretrain_on_ranks(seeded, shards, out_dir, algorithm.value, progress)
            )
        model = get_backbone(cfg)
        result = meta_pretrain(shards, stage.spec, algorithm, model, out_dir, progress=progress)
        return core_output(result)

    spec = StageSpec.of(
        stage,
        compute,
        artifacts=["."],
        run_name=f"meta-pretrain-{algorithm.value}-p{seed}",
        params={"algorithm": algorithm.value, "pretrain_seed": seed},
    )
    outcome = execute_stage(ctx, spec)
    publish_prompt(ctx.tracker, outcome, spec.run_name)  # curves, and the prompt as a model
    return as_state(outcome)
