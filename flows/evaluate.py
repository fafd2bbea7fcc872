"""Flow ``metapt-evaluate``: the few-shot grid (cells in a task runner) and the report.

prefect deployment run metapt-evaluate/evaluate -p profile=smoke --watch
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, ref_dict, stage_flow_run
from metapt_core.config import GridConfig, TaskRunner
from metapt_core.threads import available_cores, threads_per_worker, torch_threads
from tasks import plan
from tasks.cache import StageOutcome
from tasks.common import outcome_of, to_ref
from tasks.evaluate import eval_group_task, report_task
from tasks.progress import StageProgress, run_logger
from tasks.publish import log_cluster_diagnostics, log_dataset_inputs, log_pretraining_curves


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


@flow(name="metapt-evaluate", flow_run_name=flow_run_name)
def evaluate_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
    upstream: Refs | None = None,
    mlflow_parent_run_id: str = "",
) -> Refs:
    """Steps: (ingest ... meta-pretrain) -> one task per (task, shots, seed, pretrain seed) group -> report.

    A failed group is retried ``grid.retries`` times, then reported as missing while the others
    are kept.
    """
    params = locals()  # this flow's parameters, before any other local
    with stage_flow_run("evaluate", params) as (ctx, refs):
        cfg = ctx.cfg
        made = {
            key: to_ref(value) for key, value in refs.items() if key.startswith(plan.PROMPT_PREFIX)
        }
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
                            "ctx": ctx,
                            "task_name": name,
                            "shots": shots,
                            "seed": seed,
                            "pretrain_seed": pseed,
                            "assets": to_ref(refs["assets"]),
                            "tasks_ref": to_ref(refs["tasks"]),
                            "prompts": plan.group_prompts(cfg, made, pseed),
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
        objectives = {
            int(key[len(plan.OBJECTIVE_PREFIX) :]): to_ref(value)
            for key, value in refs.items()
            if key.startswith(plan.OBJECTIVE_PREFIX)
        }
        report = outcome_of(report_task(ctx, done, failed, objectives))
        try:  # what the run was trained and scored on, on its MLflow page
            log_dataset_inputs(ctx.tracker, ctx.tracker.parent_run_id, refs)
            log_cluster_diagnostics(ctx.tracker, ctx.tracker.parent_run_id, refs)
            log_pretraining_curves(ctx.tracker, ctx.tracker.parent_run_id, made)
        except Exception as error:  # a view of the inputs; never fail the pipeline for it
            run_logger().warning("evaluate: dataset inputs not logged: %s", error)
        return {
            **refs,
            "report": ref_dict(report.ref),
            "mlflow_run_id": {"id": ctx.tracker.parent_run_id},
        }
