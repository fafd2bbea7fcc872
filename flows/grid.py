"""The evaluation grid's wave: its groups in a Prefect task runner (threads, processes or Dask),
the cores shared among the workers, a failed group retried and then reported as missing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from metapt_core.config import GridConfig, TaskRunner
from metapt_core.store import ArtifactRef
from metapt_core.threads import available_cores, threads_per_worker, torch_threads
from tasks.common import outcome_of
from tasks.plan import Wave
from tasks.progress import StageProgress, run_logger
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


def run_groups(run: RunContext, task: Any, wave: Wave) -> list[ArtifactRef | None]:
    """Run one wave of evaluation groups (``task`` each) in the grid's task runner; each
    group's reference in the wave's order, None for a group that failed after
    ``grid.retries`` retries (the report names it and is made over the others).

    Raises:
        RuntimeError: every group failed.
    """
    grid = run.cfg.grid
    retried = task.with_options(retries=grid.retries)
    progress = StageProgress("evaluate", f"{len(wave)} groups")
    refs: list[ArtifactRef | None] = []
    failed: list[str] = []
    with worker_threads(grid) as threads, make_task_runner(grid) as runner:
        run_logger().info(
            "evaluate: %d worker(s) x %d torch thread(s) on %d core(s)",
            1 if grid.runner is TaskRunner.SEQUENTIAL else grid.max_workers,
            threads,
            available_cores(),
        )
        futures = [
            (label, runner.submit(retried, parameters={"ctx": run, "label": label, "stage": stage}))
            for label, stage in wave
        ]
        for index, (label, future) in enumerate(futures, start=1):
            future.wait()
            state = future.state
            if state.is_completed():
                refs.append(outcome_of(future.result()).ref)
            else:
                refs.append(None)
                failed.append(label)
                run_logger().error("evaluate: group %s failed: %s", label, state.message)
            progress(index, len(futures), label)
    if wave and len(failed) == len(wave):
        raise RuntimeError(f"every evaluation group failed: {', '.join(failed)}")
    return refs
