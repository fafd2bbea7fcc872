"""Packed passes against the padded reference: layout, scores, prompt gradients, MAML
meta-gradients (second order), on tiny Llama and tiny T5, shared / per-row / grouped prompts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from metapt_core.backbone import load_backbone
from metapt_core.config import BackboneConfig, MetaAlgorithm, ScoringConfig
from metapt_core.lm import EncodedBatch, PromptModel, TaskFormat
from metapt_core.meta.maml import Episode, maml_task_loss, meta_gradient
from metapt_core.scoring import CausalScorer, autocast_model, pack_rows

FMT = TaskFormat.of("{text} It was {answer}.", ["bad", "maybe", "good"])
TEXTS = [
    "the movie was good",
    "a terrible film with bad acting and a boring plot",
    "fine",
    "i love this phone, the screen is great",
    "the battery is bad",
    "an honest, moving story with good music",
]
LABELS = [2, 0, 1, 2, 0, 2]
REL = 2e-6  # fp32: packed and padded agree to about 1e-6 of the values' scale
META_REL = 1e-5  # second order sums Hessian-vector products: a few 1e-6 (2.6e-6 seen on T5)


def _close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    gap = float(((actual - expected).abs().max() / scale).detach())
    assert gap <= rel, f"relative gap {gap:.2e} > {rel:.0e}"


def _models(path: Path, pack_tokens: int = 256) -> tuple[PromptModel, PromptModel]:
    bb = load_backbone(BackboneConfig(name_or_path=str(path)))
    packed = PromptModel(bb, ScoringConfig(pack_tokens=pack_tokens))
    padded = PromptModel(bb, ScoringConfig(packing=False, prompt_cache=False))
    return packed, padded


def _prompts(model: PromptModel, shape: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lead = {"shared": (), "grouped": (3,), "per_row": (len(TEXTS),)}[shape]
    return torch.randn((*lead, 4, model.embed_dim), generator=gen) * 0.05


def test_layout_is_the_block_mask_of_the_docstring() -> None:
    ids = torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 4], [1, 0, 0]])
    layout = pack_rows(ids, torch.tensor([2, 1, 3, 1]), groups=2, prompt_len=2, pad_id=0)
    assert layout.token_ids.tolist() == [[5, 6, 7, 0], [8, 9, 4, 1]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 2, -1], [0, 1, 2, 3, 4, 2]]
    assert layout.row_group.tolist() == [0, 0, 1, 1] and layout.row_start.tolist() == [0, 2, 0, 3]
    # Group 0: prompt (0, 1), row 0 (2, 3), row 1 (4), padding (5).
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 0, 0, 1, 0],
            [1, 1, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(layout.allowed[0], expected)
    assert layout.sequence_prompt.tolist() == [0, 1]
    split = pack_rows(ids, torch.tensor([2, 1, 3, 1]), groups=2, prompt_len=2, max_tokens=2)
    # A budget of 2 text tokens: every row of these groups starts its own sequence.
    assert split.sequence_prompt.tolist() == [0, 0, 1, 1]
    assert split.row_group.tolist() == [0, 1, 2, 3] and split.row_start.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="groups"):
        pack_rows(ids, torch.tensor([2, 1, 3, 1]), groups=3, prompt_len=2)


@pytest.mark.parametrize("pack_tokens", [256, 12])  # 12: groups split over several sequences
@pytest.mark.parametrize("shape", ["shared", "grouped", "per_row"])
def test_packed_scores_and_gradients_equal_padded_causal(
    tiny_llama_path: Path, shape: str, pack_tokens: int
) -> None:
    packed, padded = _models(tiny_llama_path, pack_tokens)
    assert packed.scorer.packed and not padded.scorer.packed and not packed.fallbacks
    batch = packed.encode(TEXTS, LABELS, FMT)
    prompt = _prompts(packed, shape).requires_grad_(True)
    _close(packed.class_scores(prompt, batch), padded.class_scores(prompt, batch))
    (g_packed,) = torch.autograd.grad(packed.loss(prompt, batch), prompt)
    (g_padded,) = torch.autograd.grad(padded.loss(prompt, batch), prompt)
    _close(g_packed, g_padded)
    assert g_padded.abs().max() > 0


@pytest.mark.parametrize("shape", ["shared", "grouped", "per_row"])
def test_grouped_prompts_equal_one_prompt_at_a_time_seq2seq(tiny_t5_path: Path, shape: str) -> None:
    model, _ = _models(tiny_t5_path)
    batch = model.encode(TEXTS, LABELS, FMT)
    prompt = _prompts(model, shape)
    scores = model.class_scores(prompt, batch)
    groups = prompt.unsqueeze(0) if prompt.dim() == 2 else prompt
    per = len(TEXTS) // len(groups)
    alone = torch.cat(
        [
            model.class_scores(p, batch.select(range(m * per, (m + 1) * per)))
            for m, p in enumerate(groups)
        ]
    )
    _close(scores, alone)


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_score_many_equals_class_scores_per_prompt(
    which: str, tiny_llama_path: Path, tiny_t5_path: Path
) -> None:
    model, padded = _models(tiny_llama_path if which == "llama" else tiny_t5_path)
    batch = model.encode(TEXTS, LABELS, FMT)
    prompts = _prompts(model, "grouped")
    # Small chunks: several length-sorted chunks against one prompt cache.
    many = model.score_many(prompts, batch, batch_size=2)
    for m in range(len(prompts)):
        _close(many[m], padded.class_scores(prompts[m], batch))
    empty = torch.zeros((1, 0, model.embed_dim))
    _close(model.score_many(empty, batch, batch_size=4)[0], padded.class_scores(empty[0], batch))


def _episodes(model: PromptModel) -> list[Episode[EncodedBatch]]:
    batch = model.encode(TEXTS * 2, LABELS * 2, FMT)
    return [
        Episode(support=batch.select([0, 1, 2]), query=batch.select([3, 4, 5])),
        Episode(support=batch.select([6, 9, 10]), query=batch.select([7, 8, 11])),
    ]


@pytest.mark.parametrize("which", ["llama", "t5"])
@pytest.mark.parametrize("algorithm", [MetaAlgorithm.MAML, MetaAlgorithm.FOMAML])
def test_meta_gradient_packed_grouped_equals_padded_task_by_task(
    which: str, algorithm: MetaAlgorithm, tiny_llama_path: Path, tiny_t5_path: Path
) -> None:
    packed, padded = _models(tiny_llama_path if which == "llama" else tiny_t5_path)
    episodes = _episodes(packed)
    prompt = _prompts(packed, "shared")
    reference = meta_gradient(prompt, episodes, padded.loss, algorithm, 0.5, 2)
    grouped = meta_gradient(
        prompt, episodes, packed.loss, algorithm, 0.5, 2, concat=EncodedBatch.concat
    )
    _close(grouped.grad, reference.grad, META_REL)
    assert abs(grouped.query_loss - reference.query_loss) < 1e-5
    assert abs(grouped.support_loss - reference.support_loss) < 1e-5


def test_vjp_order_equals_differentiating_one_graph(tiny_llama_path: Path) -> None:
    """The query-first MAML gradient against autograd through the whole unrolled graph."""
    from metapt_core.meta.maml import second_order_attention

    model, _ = _models(tiny_llama_path)
    episode = _episodes(model)[0]
    prompt = _prompts(model, "shared")
    theta = prompt.clone().requires_grad_(True)
    with second_order_attention():
        query_loss, _, _ = maml_task_loss(theta, episode, model.loss, 0.5, 2, create_graph=True)
        (expected,) = torch.autograd.grad(query_loss, theta)
    ours = meta_gradient(prompt, [episode], model.loss, MetaAlgorithm.MAML, 0.5, 2).grad
    _close(ours, expected, META_REL)
    first = meta_gradient(prompt, [episode], model.loss, MetaAlgorithm.FOMAML, 0.5, 2).grad
    assert float((ours - first).abs().max()) > 1e-3 * float(first.abs().max())  # 2nd order is there


def test_bf16_weights_cast_once_match_autocast(tiny_llama_path: Path) -> None:
    bb = load_backbone(BackboneConfig(name_or_path=str(tiny_llama_path)))
    twin = autocast_model(bb.model)
    assert autocast_model(bb.model) is twin  # cast once per process
    linear = twin.model.layers[0].self_attn.q_proj.weight
    assert linear.dtype == torch.bfloat16 and not linear.requires_grad
    assert twin.get_input_embeddings().weight is bb.model.get_input_embeddings().weight
    assert bb.model.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    ids = torch.tensor([[3, 17, 40, 9, 11]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = bb.model(input_ids=ids).logits
        ours = twin(input_ids=ids).logits
    assert torch.equal(ours, ref)


def test_a_failing_packing_check_falls_back_loudly(
    tiny_llama_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(CausalScorer):
        def packed_states(self, prompt, input_ids, mask, read):  # type: ignore[no-untyped-def]
            return super().packed_states(prompt, input_ids, mask, read) + 1.0

    bb = load_backbone(BackboneConfig(name_or_path=str(tiny_llama_path)))
    probe = bb.tokenizer("a short probe sentence", return_tensors="pt")["input_ids"]
    with caplog.at_level(logging.WARNING):
        scorer = Broken(bb.model, ScoringConfig(), probe)
    assert not scorer.packed
    assert scorer.fallbacks and "packing" in scorer.fallbacks[0]
    assert "scoring fallback" in caplog.text


def test_rows_encoded_once_select_what_a_fresh_encode_gives(tiny_llama_path: Path) -> None:
    from metapt_core.pretraining.data import EncodedTasks
    from metapt_core.pretraining.episodes import AuxTask

    model, _ = _models(tiny_llama_path)
    task = AuxTask(7, tuple(TEXTS), torch.tensor(LABELS).numpy(), torch.arange(6).numpy(),
                     torch.arange(0).numpy())  # fmt: skip
    encoded = EncodedTasks(model, [task], FMT)
    rows = torch.tensor([4, 2, 5]).numpy()
    got = encoded.rows(0, rows)
    fresh = model.encode([TEXTS[i] for i in rows], [LABELS[i] for i in rows], FMT)
    assert torch.equal(got.input_ids, fresh.input_ids)
    assert torch.equal(got.attention_mask, fresh.attention_mask)
    assert got.labels is not None and fresh.labels is not None
    assert torch.equal(got.labels, fresh.labels)
