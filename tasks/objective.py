"""Prefect task around ``metapt_core.pretraining.objective.meta_objective_check``."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import task

from metapt_core.objective import verdict
from metapt_core.pretraining.objective import meta_objective_check
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import TASK_OPTIONS, as_state, get_backbone, no_cache
from tasks.plan import StagePlan
from tasks.progress import StageProgress
from tasks.stage import RunContext, StageSpec, execute_stage


@task(name="meta-objective", cache_policy=no_cache(), **TASK_OPTIONS)
def meta_objective_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """The meta-objective check of one pre-training seed (``meta_objective.csv``;
    :func:`tasks.plan.meta_objective_plan`); its figures become metrics of the stage's MLflow
    run (``<init>_loss_after``, ...)."""
    cfg = ctx.cfg
    seed = int(stage.extra["pretrain_seed"])
    prompts = plan.prompt_inputs(stage)
    shards = stage.upstream["shards"]

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict[str, Any]]:
        model = get_backbone(cfg)
        folders = {name: ref.path for name, ref in prompts.items()}
        out, rows = meta_objective_check(
            shards.path, stage.spec, model, folders, out_dir, stage.extra["level"],
            progress=lambda done, total, message: progress(done, total + 1, message),
        )  # fmt: skip
        stats: dict[str, Any] = {"episodes": rows[0].episodes if rows else 0}
        for row in rows:
            for field in ("loss_before", "loss_after", "after_low", "after_high", "diff_vs_ppt",
                          "vs_prior"):  # fmt: skip
                value = asdict(row)[field]
                if value == value:  # not NaN
                    stats[f"{row.init}_{field}"] = value
            if row.trained is not None:
                stats[f"{row.init}_trained"] = float(row.trained)
            if row.beats_prior is not None:
                stats[f"{row.init}_beats_prior"] = float(row.beats_prior)
        lines = [verdict(row) for row in rows if row.trained is not None]
        done = len(prompts) + 1
        progress(done, done, "; ".join(lines) or "no held-out clusters: no check")
        return ArtifactRef.of(out), stats

    spec = StageSpec.of(
        stage,
        compute,
        artifacts=["."],
        run_name=label,
        params={"pretrain_seed": seed},
    )
    return as_state(execute_stage(ctx, spec))
