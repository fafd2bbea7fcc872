"""Hardware efficiency: achieved FLOP/s of a prompt-tuning step against the measured matmul peak.

    .venv/bin/python benchmarks/bench_flops.py --mode quick
    .venv/bin/python benchmarks/bench_flops.py --mode tiny        # dry run, tiny model

The step's floating-point operations are counted exactly with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward and backward; the
backbone is frozen, so the backward computes activation gradients only, no weight gradients).
The peak is this machine's own: ``torch.mm`` of two N x N matrices in the dtype the step's
matmuls run in (bf16 under the shipped autocast where the CPU has native bf16, else fp32)
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

SIZES = {"tiny": (2, 512), "quick": (5, 2048), "full": (10, 2048)}  # (reps, matmul N)


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
    from metapt_core.lm import PromptModel

    with tempfile.TemporaryDirectory() as tmp:
        base = load_prompt_model(mode, Path(tmp), cfg.scoring)
    rows: list[Row] = []
    for bf16 in (True, False):
        model = PromptModel(base.backbone, cfg.scoring, autocast_bf16=bf16)
        if bf16 and not model.autocast_bf16:
            continue
        rows.extend(measure(model, cfg, reps, n))
    return rows


def measure(model, cfg, reps: int, n: int) -> list[Row]:  # type: ignore[no-untyped-def]
    """The step's FLOP/s against the matmul peak of the dtype its matmuls run in."""
    from metapt_core.lm import TaskFormat
    from metapt_core.prompt import init_prompt

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
    dtype = torch.bfloat16 if model.autocast_bf16 else model.embedding_matrix.dtype
    peak_fn, peak_flops = matmul_peak_arm(n, dtype, model.device)
    times = interleaved({"step": step, "peak": peak_fn}, reps)
    achieved = step_flops / median(times["step"])
    peak = peak_flops / min(times["peak"])  # a peak: the best repetition
    log(f"flops [{model.path}]: step {step_flops / 1e9:.2f} GFLOP (forward "
        f"{fwd_flops / 1e9:.2f}), {int(batch.lengths.sum())} text tokens, "
        f"threads {torch.get_num_threads()}")  # fmt: skip
    name = str(dtype).removeprefix("torch.")
    label = f"{short_name(model.name)} B{len(batch)} P{cfg.prompt.length} {name}"
    return [
        Row("3 hardware", f"prompt-tuning step FLOP/s vs {name} matmul peak", achieved / 1e9,
            peak / 1e9, "GFLOP/s", ">=0.7",
            f"{label}; peak = mm {n}x{n} {name} on {model.device.type}; median of {reps}"),
        Row("3 hardware", f"step FLOPs vs forward-only FLOPs ({name})", step_flops / 1e9,
            fwd_flops / 1e9, "GFLOP", "", "backward without weight gradients"),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "3. hardware efficiency")


if __name__ == "__main__":
    main()
