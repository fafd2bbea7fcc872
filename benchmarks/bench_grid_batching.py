"""The evaluation grid: cells one by one against batched multi-prompt training and a parallel runner.

    .venv/bin/python benchmarks/bench_grid_batching.py --mode quick
    .venv/bin/python benchmarks/bench_grid_batching.py --mode full      # default profile's mr grid
    .venv/bin/python benchmarks/bench_grid_batching.py --mode tiny      # dry run, tiny model

The grid is the default profile's, on its first task (mr: real movie snippets written as the
ingest stage writes them), run through the pipeline's own ``run_cells`` / ``run_cell_group``:

- cell by cell: ``grid.batch_prompts = false``, every cell trains and evaluates alone;
- batched: the cells of one split (task, shots, seed) train as M prompts in one pass;
- parallel: the batched groups submitted to a thread pool of ``max_workers = 2``, each worker
  at the process's torch thread count (what the thread task runner did before);
- parallel, split threads: the same pool with the cores shared, ``threads_per_worker(2)`` torch
  threads per worker (what the pipeline's thread runner does).

Full mode is that task's full grid (3 seeds x 5 initialisations = 15 cells, 30 steps, 400 test
rows); the whole default grid is three such tasks, so its time scales by 3. Quick and tiny
shrink seeds, initialisations, steps and test rows. PPT / MetaPT initialisations get fixed
random prompts (only their cost matters here). The arms' test accuracies are compared cell by
cell: batching must not change results.
"""

from __future__ import annotations

import dataclasses
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from _common import (
    Row,
    bench_parser,
    default_config,
    emit,
    interleaved,
    load_prompt_model,
    log,
    median,
    movie_snippets,
    short_name,
)

from metapt_core.config import InitMethod
from metapt_core.threads import available_cores, threads_per_worker, torch_threads

# (seeds, inits, steps, test rows, timed rounds)
SIZES: dict[str, tuple[list[int], list[str], int, int, int]] = {
    "tiny": ([0, 1], ["random", "sample_vocab"], 2, 16, 2),
    "quick": ([0, 1], ["random", "ppt"], 3, 32, 1),
    "full": ([0, 1, 2], [], 0, 0, 2),  # empty / 0: the default profile's own
}


def write_task(tasks_dir: Path, task: str, n_train: int, n_test: int) -> None:
    """``<tasks_dir>/<task>/{train,test}.parquet`` of disjoint real snippets (rows format)."""
    texts, labels = movie_snippets(n_train + n_test, seed=3)
    folder = tasks_dir / task
    folder.mkdir(parents=True)
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        frame = pd.DataFrame(
            {
                "row_id": [f"bench:{i}" for i in rows],
                "text": [texts[i] for i in rows],
                "label_id": pd.array([labels[i] for i in rows], dtype="int32"),
            }
        )
        frame["label"] = frame["label_id"].map({0: "negative", 1: "positive"})
        frame.to_parquet(folder / f"{split}.parquet", index=False)


def run(mode: str) -> list[Row]:
    from metapt_core.fewshot import build_grid, group_cells, run_cell_group, run_cells
    from metapt_core.specs import EvalSpec

    seeds, inits, steps, n_test, reps = SIZES[mode]
    base = default_config()
    task = base.tasks[0]
    n_test = n_test or task.max_test
    cfg = dataclasses.replace(
        base,
        tasks=[task],
        fewshot=dataclasses.replace(base.fewshot, seeds=seeds, steps=steps or base.fewshot.steps),
        grid=dataclasses.replace(
            base.grid, inits=[InitMethod(i) for i in inits] if inits else base.grid.inits
        ),
    )
    cells = build_grid(cfg)
    tmp_dir = tempfile.TemporaryDirectory()
    tmp = Path(tmp_dir.name)
    model = load_prompt_model(mode, tmp, cfg.scoring)
    tasks_dir = tmp / "tasks"
    write_task(tasks_dir, task.name, n_train=max(200, 8 * max(cfg.fewshot.shots)), n_test=n_test)
    gen = torch.Generator().manual_seed(0)
    pretrained = {
        init: torch.randn(cfg.prompt.length, model.embed_dim, generator=gen) * 0.02
        for init in (
            InitMethod.PPT,
            InitMethod.METAPT_MAML,
            InitMethod.METAPT_FOMAML,
            InitMethod.METAPT_REPTILE,
        )
    }
    one_by_one = dataclasses.replace(cfg, grid=dataclasses.replace(cfg.grid, batch_prompts=False))
    results: dict[str, list[Any]] = {}

    def sequential() -> None:
        results["cell by cell"] = run_cells(model, cells, tasks_dir, pretrained, one_by_one)

    def batched() -> None:
        results["batched"] = run_cells(model, cells, tasks_dir, pretrained, cfg)

    def parallel(name: str = "parallel") -> None:
        groups = group_cells(cells, batched=True)
        specs = [EvalSpec.of(cfg, g[0].task, g[0].shots, g[0].seed) for g in groups]
        with ThreadPoolExecutor(max_workers=2) as pool:
            done = pool.map(
                lambda g, s: run_cell_group(model, g, tasks_dir, pretrained, s), groups, specs
            )
            results[name] = [r for group in done for r in group]

    def parallel_split() -> None:
        # what the pipeline's thread runner does: the cores shared among the workers
        with torch_threads(threads_per_worker(2)):
            parallel("parallel, split threads")

    # Warm-up: one short cell, so no arm pays the first call's one-time costs.
    warm = dataclasses.replace(cfg, fewshot=dataclasses.replace(cfg.fewshot, steps=1))
    run_cells(model, cells[:1], tasks_dir, pretrained, warm)
    log(f"grid: {len(cells)} cells in {len(group_cells(cells))} splits, {cfg.fewshot.steps} steps, "
        f"{n_test} test rows, {short_name(model.name)}, {reps} round(s)")  # fmt: skip
    times = interleaved(
        {
            "cell by cell": sequential,
            "batched": batched,
            "parallel": parallel,
            "parallel, split threads": parallel_split,
        },
        reps,
        warmup=0,
    )
    tmp_dir.cleanup()

    def accuracies(name: str) -> dict[str, float]:
        return {r.cell_id: r.test_accuracy for r in results[name]}

    ref = accuracies("cell by cell")
    agree = min(
        sum(abs(accuracies(name)[c] - ref[c]) < 1e-9 for c in ref) / len(ref)
        for name in ("batched", "parallel", "parallel, split threads")
    )
    seq = median(times["cell by cell"])
    cores, split = available_cores(), threads_per_worker(2)
    shape = f"{len(cells)} cells, {cfg.fewshot.steps} steps, {n_test} test rows"
    return [
        Row("5 grid", "batched vs cell by cell (speed-up)", seq, median(times["batched"]), "s", "",
            f"{shape}; ratio = cell-by-cell time / batched time"),
        Row("5 grid", "parallel runner (2 threads) vs cell by cell (speed-up)", seq, median(times["parallel"]),
            "s", "", "batched groups in a 2-thread pool"),
        Row("5 grid", f"parallel runner (2 workers x {split} thread) vs cell by cell (speed-up)", seq,
            median(times["parallel, split threads"]), "s", "",
            f"{cores} cores shared: threads_per_worker(2) = {split} per worker (the pipeline's)"),
        Row("5 grid", "parallel runner, split threads vs 2 threads per worker (speed-up)",
            median(times["parallel"]), median(times["parallel, split threads"]), "s", "",
            "ratio = time with every worker at the process's thread count / time split"),
        Row("5 grid", "cells with equal test accuracy across arms", agree, 1.0, "fraction", ">=1", ""),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "5. evaluation grid")


if __name__ == "__main__":
    main()
