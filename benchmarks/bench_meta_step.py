"""Meta-learning step cost: MAML, first-order MAML and Reptile against a plain prompt-tuning step.

    .venv/bin/python benchmarks/bench_meta_step.py --mode quick
    .venv/bin/python benchmarks/bench_meta_step.py --mode tiny       # dry run, tiny model

All four arms see the same 8 real examples: the plain step trains on all 8 at once; a meta-step
adapts on 4 (support, ``meta.inner_steps`` = 1 SGD step) and is scored on the other 4 (query),
with the functions of ``metapt_core.meta.maml``, then one Adam step on the prompt. Time: the
arms interleaved, medians. Peak memory: each arm in its own fresh process (peak RSS above the
RSS after loading, via the kernel's resettable high-water mark; on CUDA,
``torch.cuda.max_memory_allocated`` above the allocation before the step).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
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
    peak_rss_delta,
    short_name,
)

ARMS = ("plain", "maml", "fomaml", "reptile")
REPS = {"tiny": 2, "quick": 3, "full": 10}


def build(mode: str, tmp: Path):  # type: ignore[no-untyped-def]
    """The model and a ``step(arm)`` function doing one Adam step of that arm."""
    from metapt_core.config import MetaAlgorithm
    from metapt_core.lm import TaskFormat
    from metapt_core.meta.maml import Episode, meta_gradient
    from metapt_core.prompt import init_prompt

    cfg = default_config()
    model = load_prompt_model(mode, tmp, cfg.scoring)
    spec = cfg.tasks[0]
    fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
    n_s, n_q = cfg.meta.support_size, cfg.meta.query_size
    texts, labels = movie_snippets(n_s + n_q, seed=1)
    both = model.encode(texts, labels, fmt)
    episode = Episode(support=both.select(range(n_s)), query=both.select(range(n_s, n_s + n_q)))
    prompt = init_prompt(model, cfg.prompt, torch.Generator().manual_seed(0)).to(model.device)
    prompt.requires_grad_(True)
    optimizer = torch.optim.Adam([prompt], lr=cfg.meta.outer_lr)
    algorithms = {
        "maml": MetaAlgorithm.MAML,
        "fomaml": MetaAlgorithm.FOMAML,
        "reptile": MetaAlgorithm.REPTILE,
    }

    def step(arm: str) -> None:
        optimizer.zero_grad(set_to_none=True)
        if arm == "plain":
            model.loss(prompt, both).backward()
        else:
            grad = meta_gradient(
                prompt,
                [episode],
                model.loss,
                algorithms[arm],
                cfg.meta.inner_lr,
                cfg.meta.inner_steps,
            ).grad
            prompt.grad = grad.to(prompt.dtype)
        optimizer.step()

    shape = f"{short_name(model.name)} S{n_s}+Q{n_q} k={cfg.meta.inner_steps} P{cfg.prompt.length}"
    return model, step, shape


def measure_memory(mode: str, arm: str) -> int:
    """Peak memory (bytes) of two steps of ``arm`` above the memory held before them."""
    with tempfile.TemporaryDirectory() as tmp:
        model, step, _ = build(mode, Path(tmp))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step(arm)
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)
    with peak_rss_delta() as out:
        for _ in range(2):
            step(arm)
    return out["delta"]


def run(mode: str) -> list[Row]:
    reps = REPS[mode]
    with tempfile.TemporaryDirectory() as tmp:
        _, step, shape = build(mode, Path(tmp))
    log(f"meta step: {shape}, {reps} interleaved rounds")
    arms: dict[str, Callable[[], object]] = {arm: functools.partial(step, arm) for arm in ARMS}
    times = interleaved(arms, reps)
    memory: dict[str, int] = {}
    for arm in ARMS:
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, "--memory-of", arm],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        memory[arm] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    plain_t, plain_m = median(times["plain"]), memory["plain"]
    rows = []
    for arm in ARMS[1:]:
        rows.append(Row("2 meta step", f"{arm} step time vs plain step", median(times[arm]), plain_t,
                        "s", "<=3.5" if arm == "maml" else "", f"{shape}, median of {reps}"))  # fmt: skip
    for arm in ARMS[1:]:
        rows.append(Row("2 meta step", f"{arm} peak memory vs plain step", memory[arm] / 2**20,
                        plain_m / 2**20, "MiB above model", "<=2" if arm == "maml" else "",
                        "fresh process per arm"))  # fmt: skip
    return rows


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--memory-of", choices=ARMS, default="", help=argparse_hidden())
    args = parser.parse_args()
    if args.memory_of:
        print(
            json.dumps(
                {"arm": args.memory_of, "peak_bytes": measure_memory(args.mode, args.memory_of)}
            )
        )
        return
    emit(run(args.mode), args.json, "2. meta-learning step cost")


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
