"""What batching the prompts of one split buys: M prompts in one pass vs M cells one by one.

    .venv/bin/python benchmarks/bench_grid_batching.py
    .venv/bin/python benchmarks/bench_grid_batching.py --prompts 5 --steps 20 --hidden 64
    .venv/bin/python benchmarks/bench_grid_batching.py --backbone .metapt/assets/smollm2-135m/model

Both arms train the same M prompts on the same rows with the same seeds (their final prompts
are checked equal) and evaluate them on the same test rows; only the batching differs. The
sequential arm uses the shared-prompt path (with the causal prompt cache), its fastest form.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from metapt_core.backbone import load_backbone
from metapt_core.config import BackboneConfig, FewShotConfig, ScoringConfig
from metapt_core.fewshot.tuning import evaluate, tune_prompts
from metapt_core.lm import PromptModel, TaskFormat
from metapt_core.tiny import CORPUS, make_tiny_llama


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5, help="M: cells of one split")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64, help="tiny Llama width")
    parser.add_argument("--layers", type=int, default=4, help="tiny Llama depth")
    parser.add_argument("--test-rows", type=int, default=64)
    parser.add_argument("--backbone", default="", help="a model folder instead of the tiny Llama")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many timings")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.backbone or str(
            make_tiny_llama(Path(tmp) / "llama", hidden=args.hidden, layers=args.layers)
        )
        model = PromptModel(
            load_backbone(BackboneConfig(name_or_path=folder, device="cpu")),
            ScoringConfig(max_length=32),
        )
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    texts = [line for line in CORPUS for _ in range(4)]
    train = model.encode(texts[:32], [i % 2 for i in range(32)], fmt)
    test_texts = (texts * 8)[: args.test_rows]
    test = model.encode(test_texts, [i % 2 for i in range(len(test_texts))], fmt)
    cfg = FewShotConfig(steps=args.steps, batch_size=args.batch_size, lr=0.3, eval_batch_size=32)
    m = args.prompts
    inits = (
        torch.randn(
            m, args.prompt_length, model.embed_dim, generator=torch.Generator().manual_seed(0)
        )
        * 0.05
    )
    seed = 10_000

    def sequential() -> torch.Tensor:
        out = [tune_prompts(model, inits[i : i + 1], train, cfg, seed)[0][0] for i in range(m)]
        for p in out:
            evaluate(model, p, test, cfg.eval_batch_size)
        return torch.stack(out)

    def batched() -> torch.Tensor:
        trained, _ = tune_prompts(model, inits, train, cfg, seed)
        for p in trained:
            evaluate(model, p, test, cfg.eval_batch_size)
        return trained

    def best(fn):  # type: ignore[no-untyped-def]
        times, result = [], None
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
        return min(times), result

    t_seq, p_seq = best(sequential)
    t_bat, p_bat = best(batched)
    diff = float((p_seq - p_bat).abs().max())
    print(f"backbone={args.backbone or f'tiny-llama h{args.hidden} L{args.layers}'} d={model.embed_dim} "
          f"M={m} steps={args.steps} batch={args.batch_size} P={args.prompt_length} test={len(test)} "
          f"threads={torch.get_num_threads()}")  # fmt: skip
    print(f"sequential (M cells one by one): {t_seq:.2f} s")
    print(f"batched (one pass, M prompts):   {t_bat:.2f} s")
    print(
        f"speed-up sequential/batched: {t_seq / t_bat:.2f}x   max |prompt difference|: {diff:.2e}"
    )


if __name__ == "__main__":
    main()
