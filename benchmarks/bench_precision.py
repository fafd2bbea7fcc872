"""Precision: bf16 autocast against fp32 for a prompt-tuning step and a MAML step.

    .venv/bin/python benchmarks/bench_precision.py --mode quick
    .venv/bin/python benchmarks/bench_precision.py --mode tiny       # dry run, tiny model

Both arms use the same frozen backbone, prompt and real examples: a prompt-tuning step (forward
and backward on the default profile's batch of 8) and a MAML meta-gradient (4 support + 4 query,
one inner SGD step, second order). The bf16 arm runs the backbone under bf16 autocast
(``backbone.autocast_bf16``), which is used on CUDA and on CPUs with native bf16 matmuls
(AVX512-BF16 or AMX); elsewhere the rows say it was skipped. Arms interleaved, medians. The
agreement rows give the largest class-score difference and the cosine of the two gradients.
"""

from __future__ import annotations

import functools
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
    short_name,
)

REPS = {"tiny": 2, "quick": 3, "full": 8}


def run(mode: str) -> list[Row]:
    from metapt_core.config import MetaAlgorithm
    from metapt_core.lm import PromptModel, TaskFormat, native_bf16
    from metapt_core.meta.maml import Episode, meta_gradient
    from metapt_core.prompt import init_prompt

    reps = REPS[mode]
    cfg = default_config()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = load_prompt_model(mode, Path(tmp), cfg.scoring)
    if not native_bf16(fp32.device):
        note = f"skipped: no native bf16 on {fp32.device.type}"
        return [Row("8 precision", "train step time, bf16 autocast vs fp32", note=note)]
    bf16 = PromptModel(fp32.backbone, cfg.scoring, autocast_bf16=True)
    spec = cfg.tasks[0]
    fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
    bsz, n_s, n_q = cfg.fewshot.batch_size, cfg.meta.support_size, cfg.meta.query_size
    texts, labels = movie_snippets(max(bsz, n_s + n_q), seed=2)
    batch = fp32.encode(texts[:bsz], labels[:bsz], fmt)
    both = fp32.encode(texts[: n_s + n_q], labels[: n_s + n_q], fmt)
    episode = Episode(support=both.select(range(n_s)), query=both.select(range(n_s, n_s + n_q)))
    prompt0 = init_prompt(fp32, cfg.prompt, torch.Generator().manual_seed(0)).to(fp32.device)

    def train_grad(model: PromptModel) -> torch.Tensor:
        prompt = prompt0.clone().requires_grad_(True)
        model.loss(prompt, batch).backward()
        assert prompt.grad is not None
        return prompt.grad

    def maml_grad(model: PromptModel) -> torch.Tensor:
        return meta_gradient(
            prompt0, [episode], model.loss, MetaAlgorithm.MAML, inner_alpha(cfg.meta.inner_lr), 1
        ).grad

    models = {"fp32": fp32, "bf16": bf16}
    arms: dict[str, Callable[[], object]] = {}
    for name, model in models.items():
        arms[f"train {name}"] = functools.partial(train_grad, model)
        arms[f"maml {name}"] = functools.partial(maml_grad, model)
    log(f"precision: {short_name(fp32.name)} B{bsz} P{cfg.prompt.length}, {reps} rounds")
    times = interleaved(arms, reps)
    with torch.no_grad():
        gap = (bf16.class_scores(prompt0, batch) - fp32.class_scores(prompt0, batch)).abs().max()
    cosines = {
        kind: float(
            torch.nn.functional.cosine_similarity(
                fn(fp32).flatten().float(), fn(bf16).flatten().float(), dim=0
            )
        )
        for kind, fn in (("train", train_grad), ("maml", maml_grad))
    }
    shape = f"{short_name(fp32.name)} B{bsz} P{cfg.prompt.length}, median of {reps}"
    rows = []
    for kind in ("train", "maml"):
        base, cand = median(times[f"{kind} fp32"]), median(times[f"{kind} bf16"])
        # ratio = fp32 time / bf16 time, so > 1 means bf16 is faster
        rows.append(Row("8 precision", f"{kind} step speed-up, bf16 autocast vs fp32", base, cand,
                        "s (fp32 / bf16)", "", shape))  # fmt: skip
    rows.append(Row("8 precision", "largest class-score difference, bf16 vs fp32", float(gap),
                    None, "logit", "", "same prompt and batch"))  # fmt: skip
    for kind, cos in cosines.items():
        rows.append(Row("8 precision", f"{kind} gradient cosine, bf16 vs fp32", cos, None, "", "",
                        "1 = same direction"))  # fmt: skip
    return rows


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "8. precision: bf16 autocast against fp32")


if __name__ == "__main__":
    main()
