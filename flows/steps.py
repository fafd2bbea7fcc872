"""The pipeline's steps as Prefect flows, each following its walk in the plan.

Every step of :data:`tasks.plan.PIPELINE` is one subflow, ``<step>`` (handed the run's context
and the references made so far), and one entry flow, ``metapt-<step>`` (its deployment's, which
runs the steps before it too): both are made here from the plan, so a step's name, its stages
and their order are written only in :mod:`tasks.plan`. A step flow drives
:func:`tasks.plan.follow_step`: each wave of stage plans the walk yields runs as the Prefect
task of its stage (:func:`stage_tasks`), the evaluation groups in the grid's task runner
(:func:`flows.grid.run_groups`), every other stage in order.

    prefect deployment run metapt-cluster/cluster -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from prefect import flow

from flows.context import entry_flow
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.common import outcome_of
from tasks.plan import Outputs, Wave
from tasks.stage import RunContext

FLOW_PREFIX = "metapt-"


def stage_tasks() -> dict[str, Any]:
    """``{stored stage: the Prefect task that runs it}`` (each task is named after its stage).

    Raises:
        LookupError: a stage of the plan has no task, or a task no stage.
    """
    from tasks.cluster import cluster_task
    from tasks.embed import embed_task
    from tasks.evaluate import eval_group_task, report_task
    from tasks.ingest import ingest_pool_task, ingest_tasks_task
    from tasks.objective import meta_objective_task
    from tasks.pretrain import meta_pretrain_task, ppt_task

    found = {
        t.name: t
        for t in (ingest_pool_task, ingest_tasks_task, embed_task, cluster_task, ppt_task,
                  meta_pretrain_task, meta_objective_task, eval_group_task, report_task)
    }  # fmt: skip
    stages = plan.refresh_groups()["all"]
    if set(found) != set(stages):
        raise LookupError(f"stage tasks {sorted(found)} do not match the plan's stages {stages}")
    return found


def run_wave(run: RunContext, wave: Wave) -> list[ArtifactRef | None]:
    """Each stage of ``wave`` run by its Prefect task; their references in the wave's order.

    Evaluation groups run side by side in the grid's task runner, a failed one answered None;
    any other stage runs in order, and its failure fails the step.
    """
    tasks = stage_tasks()
    kinds = {stage.stage for _, stage in wave}
    if kinds == {plan.GROUP_STAGE}:
        from flows.grid import run_groups

        return run_groups(run, tasks[plan.GROUP_STAGE], wave)
    return [outcome_of(tasks[stage.stage](run, label, stage)).ref for label, stage in wave]


def follow(run: RunContext, outputs: Outputs, step: plan.Step) -> Outputs:
    """The body of every step flow: the step's walk, each wave run by :func:`run_wave`.

    A step that makes the assets prepares them first; a step that makes the report then puts
    the run's inputs (pool, shards, tasks, pre-training curves) on the MLflow run.
    """
    if "assets" in step.makes:
        from tasks.assets import prepare_assets_task

        outputs = replace(outputs, assets=prepare_assets_task(run.cfg))
    made = plan.follow_step(step.name, run.cfg, outputs, lambda wave: run_wave(run, wave))
    assert made is not None  # run_wave answers every wave
    if "report" in step.makes:
        log_run_inputs(run, made)
    return made


def log_run_inputs(run: RunContext, outputs: Outputs) -> None:
    """What the run was trained and scored on, on its MLflow page (a view: never fails)."""
    from tasks.progress import run_logger
    from tasks.publish import log_cluster_diagnostics, log_dataset_inputs, log_pretraining_curves

    try:
        views = {"pool": outputs.pool, "shards": outputs.shards, "tasks": outputs.tasks}
        log_dataset_inputs(run.tracker, run.tracker.parent_run_id, views)
        log_cluster_diagnostics(run.tracker, run.tracker.parent_run_id, views)
        log_pretraining_curves(run.tracker, run.tracker.parent_run_id, outputs.prompt_refs())
    except Exception as error:  # a view of the inputs; never fail the pipeline for it
        run_logger().warning("evaluate: dataset inputs not logged: %s", error)


def _step_flow(step: plan.Step) -> Any:
    """The subflow ``<step>``: :func:`follow` over the step's walk."""

    def body(run: RunContext, outputs: Outputs) -> Outputs:
        return follow(run, outputs, step)

    body.__name__ = body.__qualname__ = f"{_snake(step.name)}_step"
    body.__doc__ = (
        f"The {step.name} step: stages {', '.join(step.stages)}, as its walk yields them."
    )
    return flow(name=step.name, flow_run_name=step.name, validate_parameters=False)(body)


def _snake(name: str) -> str:
    return name.replace("-", "_")


STEP_FLOWS: dict[str, Any] = {s.name: _step_flow(s) for s in plan.PIPELINE}
# The entry flows, bound in this module as ``<step>_flow`` (``meta_pretrain_flow``): a
# deployment's entry point is that module path.
ENTRY_FLOWS: dict[str, Any] = {s.name: entry_flow(s.name, __name__) for s in plan.PIPELINE}
globals().update({f"{_snake(name)}_flow": each for name, each in ENTRY_FLOWS.items()})


def step_flows() -> dict[str, Any]:
    """``{step name: its subflow}`` in pipeline order."""
    return dict(STEP_FLOWS)


def entry_flows() -> dict[str, Any]:
    """``{step name: its entry flow}`` (``metapt-<name>``, what its deployment serves)."""
    return dict(ENTRY_FLOWS)
