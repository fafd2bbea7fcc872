"""Prefect tasks around the evaluation grid (``metapt_core.fewshot``) and its report.

A cell is (task, initialisation, shots, seed). Cells that share (task, shots, seed) form a group,
trained together in one core call (one batched pass when ``grid.batch_prompts``); a group is one
Prefect task, one store entry and one MLflow stage run, plus an MLflow child run per cell.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from prefect import task

from metapt_core.fewshot.stage import evaluate_group
from metapt_core.report import build_report
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome, recorded_stats
from tasks.common import TASK_OPTIONS, as_state, dask_worker, get_backbone, no_cache
from tasks.plan import StagePlan
from tasks.progress import StageProgress, run_logger
from tasks.stage import RunContext, StageSpec, execute_stage, plain, result_stats
from tasks.tracking import CACHED_TAG, FLOW_RUN_TAG, KIND_TAG, SOURCE_RUN_TAG, STAGE_TAG

CELL_PARAMS = ("task", "method", "shots", "seed", "pretrain_seed", "protocol", "split_seed")


def cell_dict(cell: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    """A core cell result (dict, dataclass or object with ``metrics``) as one flat plain dict."""
    if isinstance(cell, dict):
        data = dict(cell)
    elif dataclasses.is_dataclass(cell) and not isinstance(cell, type):
        data = dataclasses.asdict(cell)
    else:
        data = dict(vars(cell))
    metrics = data.pop("metrics", None)
    if isinstance(metrics, dict):
        data.update(metrics)
    if "method" not in data and "init" in data:
        data["method"] = data["init"]  # MLflow's name for it; the report reads "init"
    for key, value in defaults.items():
        data.setdefault(key, value)
    return plain(data)


@task(name="evaluate-cells", cache_policy=no_cache(), **TASK_OPTIONS)
def eval_group_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Few-shot tune and test every initialisation of one (task, shots, seed, pretrain seed)
    group (:func:`tasks.plan.eval_group_plan`).

    The group reads each pre-trained initialisation of ``grid.inits`` from its prompt of that
    pre-training seed (the plan's upstream). Returns the group's outcome; ``stats["cells"]``
    lists the cells.
    """
    reads = stage.spec  # what the core receives is what the key hashes
    task_name, pretrain_seed = reads.task.name, reads.pretrain_seed
    shots, seed = int(stage.extra["shots"]), int(stage.extra["cell_seed"])
    tasks_ref = stage.upstream["tasks"]
    prompts = plan.prompt_inputs(stage)
    defaults = {
        "task": task_name,
        "shots": shots,
        "seed": seed,
        "pretrain_seed": pretrain_seed,
        "split_seed": reads.task.seed,
    }

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict[str, Any]]:
        worker = dask_worker()
        if worker:
            run_logger().info("%s: dask worker pid %d (%s)", label, os.getpid(), worker)
        result = evaluate_group(
            reads,
            task_name,
            tasks_ref,
            shots,
            seed,
            prompts,
            get_backbone(ctx.cfg),
            out_dir,
            progress=progress,
        )
        rows = [cell_dict(c, defaults) for c in result.cells]
        return result.ref, {**result_stats(result), "cells": rows}

    spec = StageSpec.of(
        stage,
        compute,
        run_name=label,
        params=defaults,
    )
    outcome = execute_stage(ctx, spec)
    log_cells(ctx, outcome)
    return as_state(outcome)


def log_cells(ctx: RunContext, outcome: StageOutcome) -> list[str]:
    """One MLflow child run per cell, params task/method/shots/seed/split_seed, its metrics.

    A cell served from the cache is logged again (same numbers), tagged with the run that
    computed it, so every pipeline run holds the whole grid.
    """
    run_ids = []
    for cell in outcome.stats.get("cells", []):
        params = {k: cell.get(k) for k in CELL_PARAMS}
        name = (
            f"{cell.get('task')}/{cell.get('method')}/k{cell.get('shots')}/s{cell.get('seed')}"
            f"/p{cell.get('pretrain_seed')}/{cell.get('protocol')}"
        )
        tags = {
            KIND_TAG: "cell",
            STAGE_TAG: "evaluate-cells",
            CACHED_TAG: str(outcome.cached).lower(),
            SOURCE_RUN_TAG: outcome.source_run_id,
            "prefect.flow_run_id": ctx.flow_run_id,
        }
        run_id = ctx.tracker.start_run(name, tags=tags, params=params)
        ctx.tracker.log_stats(run_id, {k: v for k, v in cell.items() if k not in CELL_PARAMS})
        ctx.tracker.end(run_id)
        run_ids.append(run_id)
    return run_ids


@task(name="report", cache_policy=no_cache(), **TASK_OPTIONS)
def report_task(ctx: RunContext, label: str, stage: StagePlan) -> StageOutcome:
    """Aggregate the cells of the completed groups (mean, spread, intervals) into
    ``results.csv``, ``report.md``, plots, with each pre-training seed's meta-objective check
    (``meta_objective.csv``) ahead (:func:`tasks.plan.report_plan`).

    The groups' cells and scores are read from their stored records (:func:`recorded_stats`).
    """
    group_refs, objectives = plan.report_inputs(stage)
    groups = [recorded_stats(ref) for ref in group_refs]
    cells = [cell for group in groups for cell in group.get("cells", [])]
    failed = list(stage.extra["failed"])

    def compute(out_dir: Path, progress: StageProgress) -> tuple[ArtifactRef, dict[str, Any]]:
        zero_shot: dict[str, float] = {}
        untuned: list[dict[str, Any]] = []
        warnings: dict[str, list[str]] = {}
        for group in groups:
            zero_shot.update(group.get("zero_shot") or {})
            untuned += group.get("untuned") or []
            pseed = group.get("pretrain_seed", 0)
            for init, found in (group.get("pretrain_warnings") or {}).items():
                warnings[f"{init}@{pseed}"] = list(found)
        checks = [Path(ref.path) / "meta_objective.csv" for _, ref in sorted(objectives.items())]
        result = build_report(
            cells, zero_shot, stage.spec, out_dir, untuned, warnings, objective_files=checks
        )
        return result.ref, {**result_stats(result), "cells": len(cells), "failed_groups": failed}

    spec = StageSpec.of(stage, compute, artifacts=["."], run_name=label)
    outcome = execute_stage(ctx, spec)
    publish_report(ctx, outcome)
    return as_state(outcome)


def report_files(outcome: StageOutcome) -> tuple[Path, Path]:
    """(results.csv, report.md) of a report outcome (searched under its folder)."""
    root = Path(outcome.ref.path)
    root = root if root.is_dir() else root.parent

    def find(name: str) -> Path:
        hits = sorted(root.rglob(name))
        return hits[0] if hits else root / name

    return find("results.csv"), find("report.md")


def publish_report(ctx: RunContext, outcome: StageOutcome) -> None:
    """The result where people look: the report folder and the answer on the pipeline run
    (metrics, verdict as description, self-contained HTML), and the Prefect artifacts (summary
    table, report with inlined images, link to the MLflow run when a server holds it)."""
    from tasks.publish import mlflow_run_url, prefect_artifacts, publish

    csv_file, _ = report_files(outcome)
    root = csv_file.parent
    parent = ctx.tracker.parent_run_id
    if parent and root.is_dir():
        ctx.tracker.log_artifacts(parent, root, "results")
        try:
            publish(ctx.tracker, parent, root)
        except Exception as error:  # the report folder is logged; the summary is a view
            run_logger().warning("report: the answer not put on the MLflow run: %s", error)
    try:
        url = mlflow_run_url(ctx.tracker.uri, ctx.tracker.experiment_id, parent) if parent else ""
        # the flow run the user started: the one the pipeline's MLflow run belongs to
        owner = ctx.tracker.client.get_run(parent).data.tags.get(FLOW_RUN_TAG, "") if parent else ""
        prefect_artifacts(root, url, owner or ctx.flow_run_id)
    except Exception as error:  # the UI is a view; never fail the pipeline for it
        run_logger().warning("report: Prefect artifacts not written: %s", error)
