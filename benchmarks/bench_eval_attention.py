"""Evaluation attention: per-row padded rows behind the cached prompt against packed chunks.

    .venv/bin/python benchmarks/bench_eval_attention.py --mode quick
    .venv/bin/python benchmarks/bench_eval_attention.py --mode tiny      # dry run, tiny model

The candidate is ``PromptModel.score_many`` as shipped: each row its own right-padded sequence
behind its prompt's cached keys and values, length-sorted chunks of up to
``fewshot.eval_batch_size`` rows, the M prompts in one ``[M * R, L]`` call per chunk. The
baseline is the path it replaced, kept here as the reference (:func:`packed_scores`): chunks
cut at ``scoring.pack_tokens`` real tokens, each packed into one sequence behind the cache
with a dense ``[M, 1, T, P + T]`` block mask. Both run the default profile's backbone,
precision and scoring on the same real movie snippets, M = 1 and 3 prompts of length 20 and
100, arms interleaved; the scores' largest difference is reported beside the time.
"""

from __future__ import annotations

from typing import Any, cast

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
)

SIZES = {"tiny": (2, 16), "quick": (5, 48), "full": (10, 256)}  # (timed reps, eval rows)


@torch.no_grad()
def packed_scores(model: Any, prompts: torch.Tensor, batch: Any) -> torch.Tensor:
    """``[M, B, C]`` first-token scores by the replaced path (module docstring)."""
    from metapt_core.scoring.packing import attention_mask, model_position_ids, pack_rows

    scorer = model.scorer
    token_ids = model._first_tokens(batch)
    n_prompts, plen = int(prompts.shape[0]), int(prompts.shape[1])
    out = torch.empty((n_prompts, len(batch), len(token_ids)))
    with model._autocast():
        positions = torch.arange(plen).expand(n_prompts, -1)
        first = scorer.base(
            inputs_embeds=prompts.to(cast(torch.Tensor, scorer.embed.weight).dtype),
            position_ids=positions,
            use_cache=True,
        )
        cache = getattr(first, "cache", None) or first.past_key_values
        max_rows = default_config().fewshot.eval_batch_size
        for idx, chunk in batch.sorted_chunks(max_rows, model.scoring.pack_tokens):
            layout = pack_rows(chunk.input_ids, chunk.lengths, 1, plen, scorer.pad_id)
            text = scorer.embed(layout.token_ids).expand(n_prompts, -1, -1)
            allowed = layout.allowed[:, plen:, :].expand(n_prompts, -1, -1)
            hidden = scorer.base(
                inputs_embeds=text,
                attention_mask=attention_mask(allowed, scorer.implementation, text.dtype),
                position_ids=model_position_ids(layout)[:, plen:].expand(n_prompts, -1),
                use_cache=False,
                **{scorer.cache_kw: cache},
            ).last_hidden_state
            cache.crop(-int(layout.token_ids.shape[1]))
            answer = hidden[:, layout.text_index((chunk.lengths - 1).unsqueeze(1))[:, 0]]
            out[:, idx] = scorer.head_logits(answer, token_ids).float()
    return out


def run(mode: str) -> list[Row]:
    import tempfile
    from pathlib import Path

    from metapt_core.config import PromptConfig
    from metapt_core.lm import PromptModel, TaskFormat
    from metapt_core.prompt import init_prompt

    reps, n_eval = SIZES[mode]
    cfg = default_config()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = load_prompt_model(mode, Path(tmp), cfg.scoring)
        model = PromptModel(base.backbone, cfg.scoring, autocast_bf16=cfg.backbone.autocast_bf16)
        precision = "bf16" if model.autocast_bf16 else "fp32"
        spec = cfg.tasks[0]
        fmt = TaskFormat.of(spec.template, spec.verbalizer, name=spec.name)
        texts, labels = movie_snippets(n_eval, seed=1)
        batch = model.encode(texts, labels, fmt)
        bsz = cfg.fewshot.eval_batch_size
        for plen in (20, 100):
            for n_prompts in (1, 3):
                gen = torch.Generator().manual_seed(plen + n_prompts)
                prompts = torch.stack(
                    [
                        init_prompt(model, PromptConfig(length=plen, init=cfg.prompt.init), gen)
                        for _ in range(n_prompts)
                    ]
                )
                new = model.score_many(prompts, batch, bsz)
                old = packed_scores(model, prompts, batch)
                gap = float((new - old).abs().max())
                agree = float((new.argmax(-1) == old.argmax(-1)).float().mean())
                times = interleaved(
                    {
                        "per-row": lambda p=prompts: model.score_many(p, batch, bsz),
                        "packed": lambda p=prompts: packed_scores(model, p, batch),
                    },
                    reps,
                )
                candidate, baseline = median(times["per-row"]), median(times["packed"])
                note = (
                    f"{len(batch)} rows, {precision}, median of {reps}; scores differ by at most "
                    f"{gap:.3g} logits, predictions agree on {agree:.3f}"
                )
                log(f"P{plen} M{n_prompts}: per-row {candidate:.3f} s, packed {baseline:.3f} s")
                rows.append(
                    Row(
                        "eval_attention",
                        f"evaluation time, P{plen}, {n_prompts} prompt(s): per-row vs packed",
                        candidate,
                        baseline,
                        "s",
                        "<=1.0",
                        note,
                    )
                )
    return rows


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "Evaluation attention: per-row padded vs packed chunks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
