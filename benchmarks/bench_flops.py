"""Hardware efficiency: achieved FLOP/s of a prompt-tuning step against the measured matmul peak.

    .venv/bin/python benchmarks/bench_flops.py --mode quick
    .venv/bin/python benchmarks/bench_flops.py --mode tiny        # dry run, tiny model

The step's floating-point operations are counted exactly with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward and backward; the
backbone is frozen, so the backward computes activation gradients only, no weight gradients).
The peak is this machine's own: ``torch.mm`` of two N x N matrices at the backbone's dtype
(``2 N^3`` operations), timed interleaved with the step, so both see the same machine load.
On a GPU the figure is reported against that device's measured matmul peak at the backbone's
dtype (``bench_gpu.py`` does it in bf16).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

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
from torch.utils.flop_counter import FlopCounterMode

SIZES = {"tiny": (2, 512), "quick": (4, 2048), "full": (10, 2048)}  # (reps, matmul N)


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, which asserts on the frozen
    backbone's inputs in torch 2.13 ("Expected gradient function to be set"); only the
    global total is needed here."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def count_flops(fn) -> int:  # type: ignore[no-untyped-def]
    """Floating-point operations (multiply-adds count 2) that ``fn()`` runs."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_arm(n: int, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    """A callable doing one ``n x n`` matmul (synchronised on CUDA), and its FLOP count."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def fn() -> None:
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return fn, 2 * n**3


def run(mode: str) -> list[Row]:
    reps, n = SIZES[mode]
    cfg = default_config()
    from metapt_core.lm import TaskFormat
    from metapt_core.prompt import init_prompt

    with tempfile.TemporaryDirectory() as tmp:
        model = load_prompt_model(mode, Path(tmp), cfg.scoring)
    spec = cfg.tasks[0]
    fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
    texts, labels = movie_snippets(cfg.fewshot.batch_size, seed=2)
    batch = model.encode(texts, labels, fmt)
    prompt = init_prompt(model, cfg.prompt, torch.Generator().manual_seed(0)).to(model.device)
    prompt.requires_grad_(True)
    optimizer = torch.optim.Adam([prompt], lr=cfg.fewshot.lr)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model.loss(prompt, batch).backward()
        optimizer.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()

    def forward() -> None:
        with torch.no_grad():
            model.class_scores(prompt, batch)

    step_flops, fwd_flops = count_flops(step), count_flops(forward)
    dtype = model.embedding_matrix.dtype
    peak_fn, peak_flops = matmul_peak_arm(n, dtype, model.device)
    times = interleaved({"step": step, "peak": peak_fn}, reps)
    achieved = step_flops / median(times["step"])
    peak = peak_flops / min(times["peak"])  # a peak: the best repetition
    log(f"flops: step {step_flops / 1e9:.2f} GFLOP (forward {fwd_flops / 1e9:.2f}), "
        f"width {batch.input_ids.shape[1]}, threads {torch.get_num_threads()}")  # fmt: skip
    label = f"{short_name(model.name)} B{len(batch)} P{cfg.prompt.length} {str(dtype).removeprefix('torch.')}"
    return [
        Row("3 hardware", "prompt-tuning step FLOP/s vs matmul peak", achieved / 1e9, peak / 1e9,
            "GFLOP/s", "", f"{label}; peak = mm {n}x{n} on {model.device.type}"),
        Row("3 hardware", "step FLOPs vs forward-only FLOPs", step_flops / 1e9, fwd_flops / 1e9,
            "GFLOP", "", "backward without weight gradients"),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "3. hardware efficiency")


if __name__ == "__main__":
    main()
