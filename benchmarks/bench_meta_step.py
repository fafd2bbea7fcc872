"""Meta-learning step cost: MAML, first-order MAML and Reptile against a plain prompt-tuning step.

    .venv/bin/python benchmarks/bench_meta_step.py --mode quick
    .venv/bin/python benchmarks/bench_meta_step.py --mode tiny       # dry run, tiny model

All four arms see the same real examples, at the default profile's meta-batch
(``meta.meta_batch_size`` tasks of ``support_size`` + ``query_size`` rows): the plain step trains
on all of them at once; a meta-step adapts each task on its support (``meta.inner_steps`` SGD
steps) and scores it on its query, with the functions of ``metapt_core.meta.maml`` exactly as
the trainer calls them (tasks in grouped packed passes), then one Adam step on the prompt. MAML
is also reported against first-order MAML: the cost of the second order alone. Time: the
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
    inner_alpha,
    interleaved,
    load_prompt_model,
    log,
    median,
    movie_snippets,
    peak_rss_delta,
    short_name,
)

ARMS = ("plain", "maml", "fomaml", "reptile")
REPS = {"tiny": 2, "quick": 5, "full": 10}


def build(mode: str, tmp: Path):  # type: ignore[no-untyped-def]
    """The model and a ``step(arm)`` function doing one Adam step of that arm."""
    from metapt_core.config import MetaAlgorithm
    from metapt_core.lm import EncodedBatch, PromptModel, TaskFormat
    from metapt_core.meta.maml import Episode, meta_gradient
    from metapt_core.prompt import init_prompt

    cfg = default_config()
    plain_model = load_prompt_model(mode, tmp, cfg.scoring)
    # The shipped precision: bf16 autocast where the CPU has native bf16.
    model = PromptModel(plain_model.backbone, cfg.scoring, autocast_bf16=cfg.backbone.autocast_bf16)
    spec = cfg.tasks[0]
    fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
    n_s, n_q, n_t = cfg.meta.support_size, cfg.meta.query_size, cfg.meta.meta_batch_size
    texts, labels = movie_snippets((n_s + n_q) * n_t, seed=1)
    both = model.encode(texts, labels, fmt)
    width = n_s + n_q
    episodes = [
        Episode(
            support=both.select(range(t * width, t * width + n_s)),
            query=both.select(range(t * width + n_s, (t + 1) * width)),
        )
        for t in range(n_t)
    ]
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
                episodes,
                model.loss,
                algorithms[arm],
                inner_alpha(cfg.meta.inner_lr),
                cfg.meta.inner_steps,
                concat=EncodedBatch.concat if cfg.meta.group_tasks else None,
            ).grad
            prompt.grad = grad.to(prompt.dtype)
        optimizer.step()

    precision = "bf16" if model.autocast_bf16 else "fp32"
    shape = (
        f"{short_name(model.name)} {precision} {n_t} tasks x S{n_s}+Q{n_q} "
        f"k={cfg.meta.inner_steps} P{cfg.prompt.length}"
    )
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
        spread = f"{min(times[arm]):.3g}-{max(times[arm]):.3g} s"
        rows.append(Row("2 meta step", f"{arm} step time vs plain step", median(times[arm]), plain_t,
                        "s", "<=1.8" if arm == "maml" else "",
                        f"{shape}, median of {reps} ({spread})"))  # fmt: skip
    rows.append(Row("2 meta step", "maml step time vs fomaml (the second order alone)",
                    median(times["maml"]), median(times["fomaml"]), "s", "",
                    f"{shape}, median of {reps}"))  # fmt: skip
    for arm in ARMS[1:]:
        rows.append(Row("2 meta step", f"{arm} peak memory vs plain step", memory[arm] / 2**20,
                        plain_m / 2**20, "MiB above model", "<=1.3" if arm == "maml" else "",
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
