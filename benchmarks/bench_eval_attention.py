"""Evaluation attention: the shipped packed chunks against per-row padded rows behind the cache.

    .venv/bin/python benchmarks/bench_eval_attention.py --mode quick
    .venv/bin/python benchmarks/bench_eval_attention.py --mode tiny      # dry run, tiny model

The baseline is ``PromptModel.score_many`` as shipped: the prompts' keys and values computed
once, then length-sorted chunks cut at ``scoring.pack_tokens`` real tokens, each packed into
one sequence behind the cache with a dense ``[M, 1, T, P + T]`` block mask, one call per chunk.
The candidate, kept here (:func:`per_row_scores`), is the alternative an attention profile
suggests: each row its own right-padded sequence behind its prompt's cached keys and values
(``L * (P + L)`` attention pairs per row, not ``T * (P + T)`` per packed sequence), chunks of
up to ``fewshot.eval_batch_size`` rows, the M prompts in one ``[M * R, L]`` call per chunk. Both
run the default profile's backbone, precision and scoring on the same real movie snippets, M =
1 and 3 prompts of length 20 and 100, arms interleaved; the scores' largest difference and
the predictions' agreement are reported beside the time. On the 2-core AMD EPYC (bf16) the
candidate was 1.01-1.21x the baseline's time, so the shipped path stays packed.
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
def per_row_scores(model: Any, prompts: torch.Tensor, batch: Any) -> torch.Tensor:
    """``[M, B, C]`` first-token scores by the per-row path (module docstring)."""
    import copy

    scorer = model.scorer
    token_ids = model._first_tokens(batch)
    n_prompts, plen = int(prompts.shape[0]), int(prompts.shape[1])
    out = torch.empty((n_prompts, len(batch), len(token_ids)))
    max_rows = default_config().fewshot.eval_batch_size
    with model._autocast():
        first = scorer.base(
            inputs_embeds=prompts.to(cast(torch.Tensor, scorer.embed.weight).dtype),
            position_ids=torch.arange(plen).expand(n_prompts, -1),
            use_cache=True,
        )
        cache = getattr(first, "cache", None) or first.past_key_values
        unbounded = max_rows * max(int(batch.input_ids.shape[1]), 1)
        for idx, chunk in batch.sorted_chunks(max_rows, unbounded):
            rows, width = (int(n) for n in chunk.input_ids.shape)
            chunk_cache = copy.deepcopy(cache)
            chunk_cache.batch_repeat_interleave(rows)  # [M * R] rows, prompt-major
            text = scorer.embed(chunk.input_ids).repeat(n_prompts, 1, 1)  # [M * R, L, d]
            mask = chunk.attention_mask.repeat(n_prompts, 1)
            mask = torch.cat([mask.new_ones((n_prompts * rows, plen)), mask], dim=1)
            hidden = scorer.base(
                inputs_embeds=text,
                attention_mask=mask,
                position_ids=(plen + torch.arange(width)).expand(n_prompts * rows, -1),
                use_cache=False,
                **{scorer.cache_kw: chunk_cache},
            ).last_hidden_state  # [M * R, L, H]
            last = (chunk.lengths - 1).repeat(n_prompts)
            answer = hidden[torch.arange(n_prompts * rows), last]
            scores = scorer.head_logits(answer, token_ids).float()
            out[:, idx] = scores.view(n_prompts, rows, -1)
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
                new = per_row_scores(model, prompts, batch)
                old = model.score_many(prompts, batch, bsz)
                gap = float((new - old).abs().max())
                agree = float((new.argmax(-1) == old.argmax(-1)).float().mean())
                times = interleaved(
                    {
                        "per-row": lambda p=prompts: per_row_scores(model, p, batch),
                        "packed": lambda p=prompts: model.score_many(p, batch, bsz),
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
                        f"evaluation time, P{plen}, {n_prompts} prompt(s): per-row vs shipped packed",
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
    emit(run(args.mode), args.json, "Evaluation attention: per-row padded vs shipped packed chunks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
