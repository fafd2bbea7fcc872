"""Flows of the evaluate step: the few-shot grid (groups in a task runner) and the report.

prefect deployment run metapt-evaluate/evaluate -p profile=smoke --watch
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from prefect import flow

from flows.context import entry_flow
from metapt_core.config import GridConfig, TaskRunner
from metapt_core.threads import available_cores, threads_per_worker, torch_threads
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import outcome_of
from tasks.evaluate import eval_group_task, report_task
from tasks.plan import Outputs
from tasks.progress import StageProgress, run_logger
from tasks.publish import log_cluster_diagnostics, log_dataset_inputs, log_pretraining_curves
from tasks.stage import RunContext


def make_task_runner(grid: GridConfig) -> Any:
    """The task runner of the grid: threads by default, Dask when ``grid.dask_address`` is set."""
    if grid.dask_address or grid.runner is TaskRunner.DASK:
        from prefect_dask import DaskTaskRunner

        if grid.dask_address:
            return DaskTaskRunner(address=grid.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": grid.max_workers,
                "dashboard_address": None,
                "host": "127.0.0.1",
            }
        )
    if grid.runner is TaskRunner.PROCESS:
        from prefect.task_runners import ProcessPoolTaskRunner

        return ProcessPoolTaskRunner(max_workers=grid.max_workers)
    from prefect.task_runners import ThreadPoolTaskRunner

    # sequential is a pool of one: the same failure isolation and retries
    workers = 1 if grid.runner is TaskRunner.SEQUENTIAL else grid.max_workers
    return ThreadPoolTaskRunner(max_workers=workers)


@contextmanager
def worker_threads(grid: GridConfig) -> Iterator[int]:
    """Share the cores among the grid's workers: each runs ``grid.threads_per_worker`` torch
    threads (0: ``max(1, cores // workers)``); yields that count.

    Thread workers take it from the process (:func:`metapt_core.threads.torch_threads`); process
    and local Dask workers from ``METAPT_TORCH_THREADS`` in the environment they inherit. A
    ``METAPT_TORCH_THREADS`` already set wins; a remote Dask cluster's workers are its own.
    """
    workers = 1 if grid.runner is TaskRunner.SEQUENTIAL else grid.max_workers
    preset = os.environ.get("METAPT_TORCH_THREADS", "").strip()
    n = grid.threads_per_worker or threads_per_worker(workers)
    if preset or grid.dask_address:
        yield int(preset) if preset.isdigit() else n
    elif grid.runner in (TaskRunner.THREAD, TaskRunner.SEQUENTIAL):
        with torch_threads(n):
            yield n
    else:
        os.environ["METAPT_TORCH_THREADS"] = str(n)
        try:
            yield n
        finally:
            os.environ.pop("METAPT_TORCH_THREADS", None)


@flow(name="evaluate", flow_run_name="evaluate", validate_parameters=False)
def evaluate_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: one Prefect task per (target task, shots, seed, pre-training seed) group -> report.

    A failed group is retried ``grid.retries`` times, then reported as missing while the others
    are kept.
    """
    cfg = run.cfg
    groups = plan.groups(cfg)
    cell_task = eval_group_task.with_options(retries=cfg.grid.retries)
    progress = StageProgress("evaluate", f"{len(groups)} groups")
    done: list[StageOutcome] = []
    failed: list[str] = []
    with worker_threads(cfg.grid) as threads, make_task_runner(cfg.grid) as runner:
        run_logger().info(
            "evaluate: %d worker(s) x %d torch thread(s) on %d core(s)",
            1 if cfg.grid.runner is TaskRunner.SEQUENTIAL else cfg.grid.max_workers,
            threads,
            available_cores(),
        )
        futures = [
            (
                f"{name}/k{shots}/s{seed}/p{pseed}",
                runner.submit(
                    cell_task,
                    parameters={
                        "ctx": run,
                        "task_name": name,
                        "shots": shots,
                        "seed": seed,
                        "pretrain_seed": pseed,
                        "assets": outputs.need("assets"),
                        "tasks_ref": outputs.need("tasks"),
                        "prompts": plan.group_prompts(cfg, outputs.prompts, pseed),
                    },
                ),
            )
            for name, shots, seed, pseed in groups
        ]
        for index, (label, future) in enumerate(futures, start=1):
            future.wait()
            state = future.state
            if state.is_completed():
                done.append(future.result())
            else:
                failed.append(label)
                run_logger().error("evaluate: group %s failed: %s", label, state.message)
            progress(index, len(futures), label)
    if not done:
        raise RuntimeError(f"every evaluation group failed: {', '.join(failed)}")
    report = outcome_of(report_task(run, done, failed, dict(outputs.objectives)))
    try:  # what the run was trained and scored on, on its MLflow page
        views = {"pool": outputs.pool, "shards": outputs.shards, "tasks": outputs.tasks}
        log_dataset_inputs(run.tracker, run.tracker.parent_run_id, views)
        log_cluster_diagnostics(run.tracker, run.tracker.parent_run_id, views)
        log_pretraining_curves(run.tracker, run.tracker.parent_run_id, outputs.prompt_refs())
    except Exception as error:  # a view of the inputs; never fail the pipeline for it
        run_logger().warning("evaluate: dataset inputs not logged: %s", error)
    return replace(outputs, report=report.ref)


evaluate_flow = entry_flow("evaluate", __name__)
