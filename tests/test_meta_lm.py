"""Meta-learners on the real PromptModel (tiny random Llama and T5): second order on CPU works,
the backbone never changes, and MAML's gradient matches finite differences through the LM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_meta_fixtures import small_config, write_shards

from metapt_core.backbone import load_backbone
from metapt_core.config import BackboneConfig, MetaAlgorithm, ScoringConfig
from metapt_core.lm import PromptModel, TaskFormat
from metapt_core.meta.maml import Episode, meta_gradient
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec, PPTSpec

FMT = TaskFormat.of("{text} It was {answer}.", ["bad", "maybe", "good"])


def _model(path: Path, prompt_cache: bool = True) -> PromptModel:
    return PromptModel(
        load_backbone(BackboneConfig(name_or_path=str(path))),
        ScoringConfig(prompt_cache=prompt_cache),
    )


def _snapshot(model: PromptModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


@pytest.mark.parametrize("which", ["llama", pytest.param("t5", marks=pytest.mark.slow)])
def test_meta_pretrain_on_tiny_lm_keeps_backbone_frozen(
    which: str, tiny_llama_path: Path, tiny_t5_path: Path, tmp_path: Path
) -> None:
    model = _model(tiny_llama_path if which == "llama" else tiny_t5_path)
    before = _snapshot(model)
    shards = write_shards(tmp_path / "shards", rows_per_shard=16, n_shards=3)
    cfg = small_config(
        meta_steps=2,
        meta_batch_size=2,
        support_size=2,
        query_size=2,
        val_every=2,
        val_episodes=2,
        val_fraction=0.25,
    )
    result = meta_pretrain(shards, MetaSpec.of(cfg), MetaAlgorithm.MAML, model, tmp_path / "maml")
    ppt = ppt_pretrain(shards, PPTSpec.of(cfg), model, tmp_path / "ppt")
    assert result.metrics["examples_seen"] == ppt.metrics["examples_seen"] == 2 * 2 * 4
    prompt, info = load_prompt(tmp_path / "maml")
    assert prompt.shape == (3, model.embed_dim) and info["algorithm"] == "maml"
    history = json.loads((tmp_path / "maml" / "history.json").read_text())
    assert all(torch.isfinite(torch.tensor(h["query_loss"])) for h in history[1:])
    for folder in ("maml", "ppt"):  # each learned prompt ships as a peft adapter too
        adapter = json.loads((tmp_path / folder / "peft" / "adapter_config.json").read_text())
        assert adapter["num_virtual_tokens"] == 3 and adapter["peft_type"] == "PROMPT_TUNING"
    after = _snapshot(model)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert not any(p.requires_grad or p.grad is not None for p in model.model.parameters())


@pytest.mark.parametrize("cache", [True, False])
def test_maml_gradient_through_sdpa_llama_matches_references(
    cache: bool, tiny_llama_path: Path
) -> None:
    """Second order through the default SDPA attention on CPU.

    Reference 1 (hand-unrolled): ``g = (I - alpha H_S(theta)) grad L_Q(theta')`` with the
    Hessian-vector product taken explicitly. Reference 2: central finite differences of
    ``L_Q(theta - alpha grad L_S(theta))`` (the scores are float32, hence the wide step).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    model = _model(tiny_llama_path, prompt_cache=cache)
    alpha = 2000.0  # the tiny random LM is nearly flat: a large step makes the Hessian term count
    gen = torch.Generator().manual_seed(0)
    theta = 2.0 * torch.randn(2, model.embed_dim, generator=gen)
    support = model.encode(["the movie was good", "a boring plot"], [2, 0], FMT)
    query = model.encode(["the battery is bad", "it was fine"], [0, 1], FMT)
    episodes = [Episode(support, query)]
    grad = meta_gradient(theta, episodes, model.loss, MetaAlgorithm.MAML, alpha, 1).grad
    first = meta_gradient(theta, episodes, model.loss, MetaAlgorithm.FOMAML, alpha, 1).grad

    def adapted(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model.loss(t, support), t)
        return (t - alpha * g).detach()

    query_grad = first  # grad L_Q at theta' (FOMAML's term, checked on the toy models)
    with sdpa_kernel(SDPBackend.MATH):
        _, hvp = torch.autograd.functional.hvp(lambda t: model.loss(t, support), theta, query_grad)
    torch.testing.assert_close(grad, query_grad - alpha * hvp, rtol=1e-4, atol=1e-6)

    h = 1e-2
    flat = grad.reshape(-1).abs()
    for index in flat.topk(3).indices.tolist():
        i, j = divmod(index, model.embed_dim)
        bump = torch.zeros_like(theta)
        bump[i, j] = h
        plus = float(model.loss(adapted(theta + bump), query))
        minus = float(model.loss(adapted(theta - bump), query))
        assert grad[i, j].item() == pytest.approx((plus - minus) / (2 * h), rel=0.05)
    assert (grad - first).abs().max() > 0.02 * flat.max()  # second order really present
