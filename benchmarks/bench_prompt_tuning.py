"""Prompt-tuning step and evaluation throughput: metapt's PromptModel against peft's prompt tuning.

    .venv/bin/python benchmarks/bench_prompt_tuning.py --mode quick
    .venv/bin/python benchmarks/bench_prompt_tuning.py --mode full --json /tmp/pt.json
    .venv/bin/python benchmarks/bench_prompt_tuning.py --mode tiny      # dry run, tiny model

Both arms run the same backbone (the embedded SmolLM2; a tiny random Llama in tiny mode) at
the default profile's batch (fewshot.batch_size), text length (scoring.max_length) and prompt
length (prompt.length), on the same real movie snippets, with the same Adam. peft gets its own
freshly loaded copy of the model (get_peft_model wraps it in place) and the standard recipe:
the full LM forward, full-vocabulary logits, then the label words' logits picked at the answer
position. metapt computes only the label words' rows (and runs the prompt once as a cache).
Both start from the same prompt values, and their evaluation predictions are compared.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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

SIZES = {"tiny": (2, 16), "quick": (4, 64), "full": (10, 256)}  # (timed reps, eval rows)


def peft_model_like(folder: str, prompt: torch.Tensor, device: torch.device) -> Any:
    """A fresh copy of the backbone wrapped by peft prompt tuning, holding ``prompt`` ``[P, d]``."""
    from peft import PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    base: Any = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = base.to(device)
    config = PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=prompt.shape[0])
    model: Any = get_peft_model(base, config)
    model.eval()  # no dropout: the same function as metapt's frozen backbone
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return model


def peft_answer_logits(model: Any, batch: Any, label_ids: torch.Tensor, plen: int) -> torch.Tensor:
    """``[B, C]`` label-word logits at the answer position, from peft's full ``[B, P+L, V]`` logits."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    rows = torch.arange(len(batch), device=logits.device)
    return logits[rows, plen + batch.lengths - 1].index_select(1, label_ids)


def run(mode: str) -> list[Row]:
    reps, n_eval = SIZES[mode]
    cfg = default_config()
    bsz, plen = cfg.fewshot.batch_size, cfg.prompt.length
    from _common import ASSETS_DIR

    from metapt_core.backbone import resolve_name
    from metapt_core.lm import TaskFormat
    from metapt_core.prompt import init_prompt

    with tempfile.TemporaryDirectory() as tmp:
        model = load_prompt_model(mode, Path(tmp), cfg.scoring)
        folder = resolve_name(model.name, ASSETS_DIR)
        spec = cfg.tasks[0]
        fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
        texts, labels = movie_snippets(bsz + n_eval, seed=0)
        train = model.encode(texts[:bsz], labels[:bsz], fmt)
        test = model.encode(texts[bsz:], labels[bsz:], fmt)
        prompt0 = init_prompt(model, cfg.prompt, torch.Generator().manual_seed(0))
        peft = peft_model_like(folder, prompt0, model.device)
    label_ids = torch.tensor([ids[0] for ids in train.label_tokens], device=model.device)
    log(f"prompt tuning: {model.name}, batch {bsz}, text <= {cfg.scoring.max_length} tokens "
        f"(train width {train.input_ids.shape[1]}), prompt {plen}, eval rows {len(test)}")  # fmt: skip

    ours = prompt0.clone().to(model.device).requires_grad_(True)
    ours_opt = torch.optim.Adam([ours], lr=cfg.fewshot.lr)
    theirs = [p for p in peft.parameters() if p.requires_grad]
    peft_opt = torch.optim.Adam(theirs, lr=cfg.fewshot.lr)

    def metapt_step() -> None:
        ours_opt.zero_grad(set_to_none=True)
        model.loss(ours, train).backward()
        ours_opt.step()

    def peft_step() -> None:
        peft_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(
            peft_answer_logits(peft, train, label_ids, plen).float(), train.labels
        )
        loss.backward()
        peft_opt.step()

    # Equal predictions are checked before any training step (same prompt values in both).
    with torch.no_grad():
        ours_pred = model.predict(prompt0, test, cfg.fewshot.eval_batch_size)
        peft_pred = torch.cat(
            [
                peft_answer_logits(peft, chunk, label_ids, plen).argmax(-1)
                for chunk in test.chunks(cfg.fewshot.eval_batch_size)
            ]
        )
    agreement = float((ours_pred == peft_pred).float().mean())

    def metapt_eval() -> None:
        model.predict(ours.detach(), test, cfg.fewshot.eval_batch_size)

    @torch.no_grad()
    def peft_eval() -> None:
        for chunk in test.chunks(cfg.fewshot.eval_batch_size):
            peft_answer_logits(peft, chunk, label_ids, plen).argmax(-1)

    train_t = interleaved({"metapt": metapt_step, "peft": peft_step}, reps)
    eval_t = interleaved({"metapt": metapt_eval, "peft": peft_eval}, max(2, reps // 2))
    tr_ours, tr_peft = bsz / median(train_t["metapt"]), bsz / median(train_t["peft"])
    ev_ours, ev_peft = len(test) / median(eval_t["metapt"]), len(test) / median(eval_t["peft"])
    shape = f"{short_name(model.name)} B{bsz} P{plen} L<={cfg.scoring.max_length}"
    return [
        Row("1 prompt tuning", "train step throughput (metapt vs peft)", tr_ours, tr_peft,
            "examples/s", ">=1.3", f"{shape}, median of {reps}"),
        Row("1 prompt tuning", "eval throughput (metapt vs peft)", ev_ours, ev_peft,
            "examples/s", ">=2", f"{len(test)} rows, eval batch {cfg.fewshot.eval_batch_size}"),
        Row("1 prompt tuning", "prediction agreement with peft", agreement, 1.0, "fraction",
            ">=1", f"{len(test)} rows, same prompt"),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "1. prompt tuning: metapt vs peft")


if __name__ == "__main__":
    main()
