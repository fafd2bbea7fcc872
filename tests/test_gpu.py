"""CUDA against CPU on the pipeline's own path: class scores, prompt gradients and the MAML
meta-gradient of a tiny random Llama (packed passes, prompt cache) and a tiny random T5.

Tolerances: float32 on both devices agrees to rounding (scores 1e-4 absolute, gradients 1e-3
relative to their norm: cuBLAS sums in another order, and TF32 is off); bf16 autocast on CUDA
against float32 on CPU keeps the gradient's direction (cosine >= 0.99) and the predictions.
Skipped, in one line, where no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metapt_core.backbone import load_backbone
from metapt_core.config import BackboneConfig, MetaAlgorithm, ScoringConfig
from metapt_core.lm import PromptModel, TaskFormat
from metapt_core.meta.maml import Episode, meta_gradient
from metapt_core.tiny import make_tiny_llama, make_tiny_t5

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU checks skipped"),
]

TEXTS = ["the movie was good", "a terrible film", "i love this phone", "bad acting",
         "great actors", "a boring plot", "good music", "terrible service"]  # fmt: skip
LABELS = [1, 0, 1, 0, 1, 0, 1, 0]


def _model(folder: Path, device: str, bf16: bool = False) -> PromptModel:
    backbone = load_backbone(BackboneConfig(name_or_path=str(folder), device=device))
    return PromptModel(backbone, ScoringConfig(max_length=24), autocast_bf16=bf16)


@pytest.fixture(scope="module", params=["llama", "t5"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(request.param)
    folder = make_tiny_llama(root / "m") if request.param == "llama" else make_tiny_t5(root / "m")
    return folder, _model(folder, "cpu"), _model(folder, "cuda")


def _inputs(model: PromptModel):
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    batch = model.encode(TEXTS, LABELS, fmt)
    prompt = torch.randn(4, model.embed_dim, generator=torch.Generator().manual_seed(0)) * 0.05
    return batch, prompt.to(model.device)


def _grad(model: PromptModel, prompt: torch.Tensor, batch) -> torch.Tensor:
    p = prompt.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.loss(p, batch), p)
    return g.cpu()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_cuda_path_has_no_fallback(pair) -> None:
    _, _, gpu = pair
    assert gpu.fallbacks == [], gpu.fallbacks


def test_scores_and_prompt_gradients_match_cpu(pair) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    _, cpu, gpu = pair
    (cb, cp), (gb, gp) = _inputs(cpu), _inputs(gpu)
    with torch.no_grad():
        torch.testing.assert_close(gpu.class_scores(gp, gb).cpu(), cpu.class_scores(cp, cb),
                                   atol=1e-4, rtol=0)  # fmt: skip
        many_c = cpu.score_many(torch.stack([cp, -cp]), cb, 3)
        many_g = gpu.score_many(torch.stack([gp, -gp]), gb, 3).cpu()
        torch.testing.assert_close(many_g, many_c, atol=1e-4, rtol=0)
    assert _relative(_grad(gpu, gp, gb), _grad(cpu, cp, cb)) < 1e-3


def test_maml_meta_gradient_matches_cpu(pair) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    _, cpu, gpu = pair
    grads = []
    for model in (cpu, gpu):
        batch, prompt = _inputs(model)
        episodes = [Episode(batch.select(range(0, 4)), batch.select(range(4, 8)))]
        p = prompt.clone().requires_grad_(True)
        result = meta_gradient(p, episodes, model.loss, MetaAlgorithm.MAML, 0.5, 1)
        grads.append(result.grad.detach().cpu())
    assert _relative(grads[1], grads[0]) < 1e-3


def test_bf16_autocast_keeps_direction_and_predictions(pair) -> None:
    folder, cpu, _ = pair
    bf16 = _model(folder, "cuda", bf16=True)
    assert bf16.autocast_bf16 and bf16.fallbacks == []
    (cb, cp), (gb, gp) = _inputs(cpu), _inputs(bf16)
    g_cpu, g_bf16 = _grad(cpu, cp, cb), _grad(bf16, gp, gb)
    cosine = float(torch.nn.functional.cosine_similarity(g_cpu.flatten(), g_bf16.flatten(), dim=0))
    assert cosine >= 0.99, cosine
    with torch.no_grad():
        scores_c, scores_g = cpu.class_scores(cp, cb), bf16.class_scores(gp, gb).cpu()
    confident = (scores_c[:, 1] - scores_c[:, 0]).abs() > 0.05
    assert torch.equal(scores_c.argmax(-1)[confident], scores_g.argmax(-1)[confident])
