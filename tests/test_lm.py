"""PromptModel: class scores against full-model references, prompt cache, seq2seq, peft export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metapt_core.backbone import Backbone, load_backbone
from metapt_core.config import (
    BackboneConfig,
    BackboneKind,
    LossKind,
    PromptConfig,
    PromptInit,
    ScoringConfig,
    ScoringMode,
)
from metapt_core.errors import ConfigError, DataError
from metapt_core.lm import PromptModel, TaskFormat
from metapt_core.prompt import export_peft, init_prompt, load_prompt, save_prompt

TEXTS = ["the movie was good", "a terrible film with bad acting and a boring plot", "fine"]
LABELS = [1, 0, 1]
FMT = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])


def _backbone(path: Path) -> Backbone:
    return load_backbone(BackboneConfig(name_or_path=str(path)))


def _prompt(model: PromptModel, length: int = 5, seed: int = 0) -> torch.Tensor:
    cfg = PromptConfig(length=length, init=PromptInit.RANDOM)
    return init_prompt(model, cfg, torch.Generator().manual_seed(seed))


def _reference_causal_logits(
    bb: Backbone, prompt: torch.Tensor, model: PromptModel, texts: list[str]
) -> torch.Tensor:
    """Full-vocabulary logits of the whole model over [prompt; text], at each answer position."""
    batch = model.encode(texts, None, FMT)
    emb = bb.model.get_input_embeddings()(batch.input_ids)
    plen = prompt.shape[0]
    x = torch.cat([prompt.unsqueeze(0).expand(len(texts), -1, -1), emb], dim=1)
    mask = torch.cat([torch.ones(len(texts), plen, dtype=torch.long), batch.attention_mask], dim=1)
    logits = bb.model(inputs_embeds=x, attention_mask=mask).logits
    rows = torch.arange(len(texts))
    return logits[rows, plen + batch.lengths - 1]


def test_backbone_is_frozen_and_kind_detected(tiny_llama_path: Path, tiny_t5_path: Path) -> None:
    llama, t5 = _backbone(tiny_llama_path), _backbone(tiny_t5_path)
    assert llama.kind is BackboneKind.CAUSAL and t5.kind is BackboneKind.SEQ2SEQ
    for bb in (llama, t5):
        assert not any(p.requires_grad for p in bb.model.parameters())
        assert not bb.model.training


@pytest.mark.parametrize("cache", [True, False])
def test_first_token_scores_match_full_model(tiny_llama_path: Path, cache: bool) -> None:
    bb = _backbone(tiny_llama_path)
    model = PromptModel(bb, ScoringConfig(prompt_cache=cache))
    prompt = _prompt(model)
    batch = model.encode(TEXTS, LABELS, FMT)
    first = [ids[0] for ids in batch.label_tokens]
    ref = _reference_causal_logits(bb, prompt, model, TEXTS)[:, first]
    torch.testing.assert_close(model.class_scores(prompt, batch), ref, atol=1e-5, rtol=1e-5)


def test_prompt_cache_gives_same_scores_and_gradients(tiny_llama_path: Path) -> None:
    bb = _backbone(tiny_llama_path)
    cached, plain = (
        PromptModel(bb, ScoringConfig(prompt_cache=True)),
        PromptModel(bb, ScoringConfig(prompt_cache=False)),
    )
    prompt = _prompt(cached).requires_grad_()
    batch = cached.encode(TEXTS, LABELS, FMT)
    (g_cached,) = torch.autograd.grad(cached.loss(prompt, batch), prompt)
    (g_plain,) = torch.autograd.grad(plain.loss(prompt, batch), prompt)
    torch.testing.assert_close(g_cached, g_plain, atol=1e-6, rtol=1e-5)
    assert g_cached.abs().sum() > 0


def test_per_row_prompts_equal_shared_prompt(tiny_llama_path: Path, tiny_t5_path: Path) -> None:
    for path in (tiny_llama_path, tiny_t5_path):
        model = PromptModel(_backbone(path))
        prompt = _prompt(model)
        batch = model.encode(TEXTS, LABELS, FMT)
        rows = prompt.unsqueeze(0).repeat(len(TEXTS), 1, 1)
        torch.testing.assert_close(
            model.class_scores(rows, batch), model.class_scores(prompt, batch), atol=1e-5, rtol=1e-5
        )
        # A different prompt in one row changes only that row.
        rows[1] += 1.0
        diff = (
            (model.class_scores(rows, batch) - model.class_scores(prompt, batch)).abs().sum(dim=1)
        )
        assert diff[1] > 1e-3 and diff[0] < 1e-6 and diff[2] < 1e-6


def test_sequence_mode_is_log_likelihood_of_label_tokens(tiny_llama_path: Path) -> None:
    bb = _backbone(tiny_llama_path)
    fmt = TaskFormat.of("{text} It was {answer}.", ["terrible", "maybe fine"])
    model = PromptModel(bb, ScoringConfig(mode=ScoringMode.SEQUENCE))
    prompt = _prompt(model)
    batch = model.encode(TEXTS, None, fmt)
    assert max(len(t) for t in batch.label_tokens) > 1  # a multi-token label word is exercised
    scores = model.class_scores(prompt, batch)
    # Reference: render "text + label word" and sum log-probs of the label tokens, by hand.
    for c, _word in enumerate(fmt.verbalizer):
        tokens = batch.label_tokens[c]
        for i, text in enumerate(TEXTS):
            ids = model.tokenizer(f"{text} It was", add_special_tokens=True)["input_ids"] + list(
                tokens
            )
            emb = bb.model.get_input_embeddings()(torch.tensor([ids]))
            logp = bb.model(
                inputs_embeds=torch.cat([prompt.unsqueeze(0), emb], 1)
            ).logits.log_softmax(-1)[0]
            start = prompt.shape[0] + len(ids) - len(tokens) - 1
            ref = sum(logp[start + j, t] for j, t in enumerate(tokens))
            assert abs(float(scores[i, c]) - float(ref)) < 1e-4


def test_first_token_mode_refuses_shared_first_tokens(tiny_llama_path: Path) -> None:
    model = PromptModel(_backbone(tiny_llama_path))
    with pytest.raises(ConfigError, match="share their first token"):
        model.encode(TEXTS, None, TaskFormat.of("{text} It was {answer}.", ["good", "good bye"]))


def test_lm_loss_is_full_vocab_cross_entropy(tiny_llama_path: Path) -> None:
    bb = _backbone(tiny_llama_path)
    model = PromptModel(bb, ScoringConfig(loss=LossKind.LM))
    prompt = _prompt(model)
    batch = model.encode(TEXTS, LABELS, FMT)
    full = _reference_causal_logits(bb, prompt, model, TEXTS)
    gold = torch.tensor([batch.label_tokens[y][0] for y in LABELS])
    ref = torch.nn.functional.cross_entropy(full, gold)
    torch.testing.assert_close(model.loss(prompt, batch), ref, atol=1e-5, rtol=1e-5)


def test_seq2seq_scores_match_full_model(tiny_t5_path: Path) -> None:
    bb = _backbone(tiny_t5_path)
    model = PromptModel(bb)
    prompt = _prompt(model, length=3)
    batch = model.encode(TEXTS, LABELS, FMT)
    assert len(batch.decoder_prefix) == 2  # decoder start + <extra_id_0>
    emb = bb.model.get_input_embeddings()(batch.input_ids)
    x = torch.cat([prompt.unsqueeze(0).expand(3, -1, -1), emb], 1)
    mask = torch.cat([torch.ones(3, 3, dtype=torch.long), batch.attention_mask], 1)
    dec = torch.tensor([list(batch.decoder_prefix)] * 3)
    logits = bb.model(inputs_embeds=x, attention_mask=mask, decoder_input_ids=dec).logits[:, -1]
    ref = logits[:, [t[0] for t in batch.label_tokens]]
    torch.testing.assert_close(model.class_scores(prompt, batch), ref, atol=1e-5, rtol=1e-5)


def test_zero_length_prompt_is_zero_shot(tiny_llama_path: Path) -> None:
    bb = _backbone(tiny_llama_path)
    model = PromptModel(bb)
    empty = torch.zeros(0, model.embed_dim)
    batch = model.encode(TEXTS, None, FMT)
    ref = _reference_causal_logits(bb, empty, model, TEXTS)[:, [t[0] for t in batch.label_tokens]]
    torch.testing.assert_close(model.class_scores(empty, batch), ref, atol=1e-5, rtol=1e-5)


def test_training_never_changes_the_backbone(tiny_llama_path: Path) -> None:
    bb = _backbone(tiny_llama_path)
    before = {k: v.clone() for k, v in bb.model.state_dict().items()}
    model = PromptModel(bb)
    prompt = _prompt(model).requires_grad_()
    opt = torch.optim.Adam([prompt], lr=0.1)
    batch = model.encode(TEXTS, LABELS, FMT)
    start = float(model.loss(prompt, batch).detach())
    for _ in range(5):
        opt.zero_grad()
        model.loss(prompt, batch).backward()
        opt.step()
    assert float(model.loss(prompt, batch)) < start
    for key, value in bb.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_init_modes(tiny_llama_path: Path, tmp_path: Path) -> None:
    model = PromptModel(_backbone(tiny_llama_path))
    emb = model.embedding_matrix.detach()
    vocab = init_prompt(
        model,
        PromptConfig(length=6, init=PromptInit.SAMPLE_VOCAB),
        torch.Generator().manual_seed(1),
    )
    assert all(any(torch.equal(row, e) for e in emb) for row in vocab)
    ids = model.tokenizer("good movie", add_special_tokens=False)["input_ids"]
    text = init_prompt(
        model,
        PromptConfig(length=2 * len(ids) + 1, init=PromptInit.TEXT, init_text="good movie"),
        None,
    )
    assert torch.equal(text[0], emb[ids[0]]) and torch.equal(text[len(ids)], emb[ids[0]])
    rnd = init_prompt(
        model, PromptConfig(length=400, init=PromptInit.RANDOM), torch.Generator().manual_seed(2)
    )
    assert abs(float(rnd.std()) - float(emb.std())) < 0.1 * float(emb.std())
    save_prompt(tmp_path / "p", vocab, {"made_by": "test"})
    from_file = init_prompt(
        model, PromptConfig(length=6, init=PromptInit.FILE, init_file=str(tmp_path / "p")), None
    )
    assert torch.equal(from_file, vocab)
    with pytest.raises(ConfigError, match="prompt.init_file"):
        init_prompt(
            model, PromptConfig(length=5, init=PromptInit.FILE, init_file=str(tmp_path / "p")), None
        )


def test_prompt_round_trip_and_corruption(tmp_path: Path) -> None:
    prompt = torch.randn(4, 8)
    save_prompt(tmp_path / "p", prompt, {"backbone": "x", "init": "random"})
    loaded, meta = load_prompt(tmp_path / "p")
    assert torch.equal(loaded, prompt) and meta["length"] == 4 and meta["dim"] == 8
    (tmp_path / "p" / "prompt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_prompt(tmp_path / "p")
    with pytest.raises(DataError, match="no prompt"):
        load_prompt(tmp_path / "missing")


@pytest.mark.parametrize("which", ["llama", "t5"])
def test_peft_export_gives_same_scores(
    which: str, tiny_llama_path: Path, tiny_t5_path: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    path = tiny_llama_path if which == "llama" else tiny_t5_path
    model = PromptModel(_backbone(path))
    prompt = _prompt(model, length=4)
    batch = model.encode(TEXTS, None, FMT)
    ours = model.class_scores(prompt, batch)
    export_peft(prompt, model, str(path), tmp_path / "adapter")
    fresh_cls = AutoModelForCausalLM if which == "llama" else AutoModelForSeq2SeqLM
    peft_model = PeftModel.from_pretrained(
        fresh_cls.from_pretrained(path), tmp_path / "adapter"
    ).eval()
    first = [t[0] for t in batch.label_tokens]
    with torch.no_grad():
        if which == "llama":
            logits = peft_model(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask
            ).logits
            theirs = logits[torch.arange(3), 4 + batch.lengths - 1][:, first]
        else:
            dec = torch.tensor([list(batch.decoder_prefix)] * 3)
            logits = peft_model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                decoder_input_ids=dec,
            ).logits
            theirs = logits[:, -1, first]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_grouped_prompts_equal_per_row_prompts(tiny_llama_path: Path, tiny_t5_path: Path) -> None:
    """[M, P, d] with rows grouped by prompt == the same prompts repeated per row."""
    for path in (tiny_llama_path, tiny_t5_path):
        model = PromptModel(_backbone(path))
        prompts = torch.stack([_prompt(model, seed=s) for s in (0, 1)]).requires_grad_()
        batch = model.encode(TEXTS[:2] * 2, [1, 0, 1, 0], FMT)
        grouped = model.class_scores(prompts, batch)
        per_row = model.class_scores(prompts.repeat_interleave(2, dim=0), batch)
        torch.testing.assert_close(grouped, per_row, atol=1e-5, rtol=1e-5)
        (g_grouped,) = torch.autograd.grad(model.loss(prompts, batch), prompts)
        (g_rows,) = torch.autograd.grad(
            model.loss(prompts.repeat_interleave(2, dim=0), batch), prompts
        )
        torch.testing.assert_close(g_grouped, g_rows, atol=1e-6, rtol=1e-5)
        with pytest.raises(ValueError, match="does not fit"):
            model.class_scores(torch.stack([prompts[0]] * 3), batch)


def test_bf16_autocast_on_cpu_is_close_to_fp32(tiny_llama_path: Path) -> None:
    """Where the CPU has native bf16, autocast runs the backbone in bf16: scores and gradients
    stay close to fp32 and the prompt gradient still flows; elsewhere the flag is ignored."""
    from metapt_core.lm import native_bf16

    bb = _backbone(tiny_llama_path)
    fp32, bf16 = PromptModel(bb), PromptModel(bb, autocast_bf16=True)
    assert bf16.autocast_bf16 == native_bf16(torch.device("cpu"))
    batch = fp32.encode(TEXTS, LABELS, FMT)
    prompt = _prompt(fp32).requires_grad_(True)
    (g32,) = torch.autograd.grad(fp32.loss(prompt, batch), prompt)
    (g16,) = torch.autograd.grad(bf16.loss(prompt, batch), prompt)
    s32, s16 = fp32.class_scores(prompt, batch), bf16.class_scores(prompt, batch)
    assert s16.dtype == torch.float32
    torch.testing.assert_close(s16, s32, atol=0.05, rtol=0.05)
    cos = torch.nn.functional.cosine_similarity(g16.flatten(), g32.flatten(), dim=0)
    assert cos > 0.98


def test_native_bf16_follows_the_cpu_flags(tmp_path: Path) -> None:
    """AVX-512 alone (Skylake to Ice Lake: emulated bf16) is not native; AVX512-BF16 or AMX
    is; the flags are read from /proc/cpuinfo's ``flags`` line."""
    from metapt_core.scoring.precision import cpu_flags, native_bf16

    cpu = torch.device("cpu")
    assert not native_bf16(cpu, {"avx2", "avx512f", "avx512bw", "avx512_vnni"})
    assert native_bf16(cpu, {"avx512f", "avx512_bf16"})
    assert native_bf16(cpu, {"avx512f", "amx_bf16", "amx_tile"})
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n\nflags\t: fpu\n")
    assert cpu_flags(str(info)) == {"fpu", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) is None


def test_bf16_hessian_vector_product_is_close_to_fp32(tiny_llama_path: Path) -> None:
    """The product the meta-gradient and the curvature estimate use, ``H v`` of the support
    loss in the prompt, under bf16 autocast against fp32: cosine >= 0.98, relative error of
    ``v^T H v`` (the Rayleigh quotient that sizes alpha) within 10%."""
    from metapt_core.lm import native_bf16
    from metapt_core.meta.maml import second_order_attention

    if not native_bf16(torch.device("cpu")):
        pytest.skip("this CPU has no native bf16: autocast is off, nothing to compare")
    bb = _backbone(tiny_llama_path)
    fp32, bf16 = PromptModel(bb), PromptModel(bb, autocast_bf16=True)
    batch = fp32.encode(TEXTS, LABELS, FMT)
    theta = _prompt(fp32)
    vector = torch.randn(theta.shape, generator=torch.Generator().manual_seed(3))
    vector = vector / vector.norm()
    products = []
    for model in (fp32, bf16):
        point = theta.clone().requires_grad_(True)
        with second_order_attention():
            (grad,) = torch.autograd.grad(model.loss(point, batch), point, create_graph=True)
        (hvp,) = torch.autograd.grad(grad, point, grad_outputs=vector)
        products.append(hvp.float())
    h32, h16 = products
    cos = torch.nn.functional.cosine_similarity(h16.flatten(), h32.flatten(), dim=0)
    assert cos > 0.98
    q32, q16 = float(h32.flatten() @ vector.flatten()), float(h16.flatten() @ vector.flatten())
    print(f"bf16 HVP: cosine {float(cos):.5f}, Rayleigh quotient {q16:.5g} vs {q32:.5g}")
    assert abs(q16 - q32) <= 0.1 * abs(q32)


def test_torch_threads_follow_the_environment(
    tiny_llama_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``METAPT_TORCH_THREADS`` sets the intra-op threads when a backbone is loaded; a value
    that is not a positive integer is refused naming the variable."""
    from metapt_core.backbone import clear_cache
    from metapt_core.errors import ConfigError

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("METAPT_TORCH_THREADS", "1")
        clear_cache()
        _backbone(tiny_llama_path)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("METAPT_TORCH_THREADS", "two")
        clear_cache()
        with pytest.raises(ConfigError, match="METAPT_TORCH_THREADS"):
            _backbone(tiny_llama_path)
    finally:
        torch.set_num_threads(before)
        clear_cache()
