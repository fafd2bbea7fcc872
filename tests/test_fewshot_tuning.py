"""Batched few-shot prompt tuning: equivalence with training alone, determinism, dev selection."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score

from metapt_core.config import FewShotConfig
from metapt_core.fewshot.metrics import classification_metrics
from metapt_core.fewshot.tuning import MinibatchSampler, evaluate, tune_prompts


@dataclass
class ToyBatch:
    """Rows of features with gold labels, shaped like an EncodedBatch."""

    features: torch.Tensor  # [B, F]
    labels: torch.Tensor  # [B]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, indices: torch.Tensor) -> ToyBatch:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ToyBatch(self.features[idx], self.labels[idx])


class ToyModel:
    """A frozen, nonlinear scorer with a per-row prompt: scores = tanh(x A + sum_p(P) B) W."""

    def __init__(self, n_features: int = 6, dim: int = 5, n_classes: int = 3, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.A = torch.randn(n_features, 8, generator=g)
        self.B = torch.randn(dim, 8, generator=g)
        self.W = torch.randn(8, n_classes, generator=g)

    def class_scores(self, prompt: torch.Tensor, batch: ToyBatch) -> torch.Tensor:
        if prompt.dim() == 2:
            prompt = prompt.unsqueeze(0).expand(len(batch), -1, -1)
        hidden = torch.tanh(batch.features @ self.A + prompt.sum(1) @ self.B)
        return hidden @ self.W

    def loss(self, prompt: torch.Tensor, batch: ToyBatch) -> torch.Tensor:
        return F.cross_entropy(self.class_scores(prompt, batch), batch.labels)


def toy_data(n: int = 24, seed: int = 1) -> ToyBatch:
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, 6, generator=g)
    labels = torch.arange(n) % 3
    return ToyBatch(features, labels)


CFG = FewShotConfig(steps=12, batch_size=5, lr=0.05, eval_every=4, eval_batch_size=7)


def test_sampler_is_seeded_and_batches_distinct_rows():
    a = MinibatchSampler(10, 4, seed=3)
    b = MinibatchSampler(10, 4, seed=3)
    for _ in range(6):
        x, y = a.next(), b.next()
        assert torch.equal(x, y)
        assert len(set(x.tolist())) == 4
    assert MinibatchSampler(3, 8, 0).next().numel() == 3


def test_batched_training_equals_training_alone():
    model, data = ToyModel(), toy_data()
    g = torch.Generator().manual_seed(5)
    inits = torch.randn(3, 4, 5, generator=g) * 0.1
    seeds = [11, 12, 13]
    batched, _ = tune_prompts(model, inits, data, CFG, seeds)
    for m in range(3):
        alone, _ = tune_prompts(model, inits[m : m + 1], data, CFG, seeds[m])
        assert torch.allclose(batched[m], alone[0], atol=1e-5), m
        assert not torch.allclose(alone[0], inits[m], atol=1e-3)  # it did train


def test_sgd_step_is_the_plain_gradient_step():
    """One SGD step from p0 on the first minibatch is p0 - lr * grad L(p0) (MetaPT's inner update)."""
    model, data = ToyModel(), toy_data()
    init = torch.randn(1, 4, 5, generator=torch.Generator().manual_seed(8)) * 0.1
    cfg = FewShotConfig(steps=1, batch_size=5, lr=0.3, optimizer="sgd")
    trained, _ = tune_prompts(model, init, data, cfg, 4)
    rows = MinibatchSampler(len(data), 5, 4).next()
    p0 = init[0].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.loss(p0, data.select(rows)), p0)
    assert torch.allclose(trained[0], init[0] - 0.3 * grad, atol=1e-6)
    adam, _ = tune_prompts(model, init, data, dataclasses.replace(cfg, optimizer="adam"), 4)
    assert not torch.allclose(adam[0], trained[0], atol=1e-4)  # the setting is honoured


def test_sgd_trust_region_caps_each_prompt_step_at_r_times_its_norm():
    """With r > 0, prompt m moves by min(lr, r ||p_m|| / ||g_m||) g_m: the inner rule MetaPT was
    trained with. A large prompt keeps lr, a small one is capped, each by its own norm."""
    model, data = ToyModel(), toy_data()
    g = torch.Generator().manual_seed(8)
    inits = torch.randn(2, 4, 5, generator=g) * torch.tensor([3.0, 0.01]).view(2, 1, 1)
    lr, r = 0.3, 0.25
    cfg = FewShotConfig(steps=1, batch_size=len(data), lr=lr, optimizer="sgd")
    trained, _ = tune_prompts(model, inits, data, cfg, 4, max_step_ratio=r)
    capped = []
    for m in range(2):
        p0 = inits[m].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.loss(p0, data), p0)
        size = min(lr, r * float(inits[m].norm()) / float(grad.norm()))
        capped.append(size < lr)
        assert torch.allclose(trained[m], inits[m] - size * grad, atol=1e-6), m
    assert capped == [False, True]  # one of each: both branches of the rule were checked
    step = (trained[1] - inits[1]).norm() / inits[1].norm()
    assert float(step) == pytest.approx(r, rel=1e-4)
    plain, _ = tune_prompts(model, inits, data, cfg, 4)
    assert torch.allclose(plain[0], trained[0], atol=1e-6)
    assert not torch.allclose(plain[1], trained[1], atol=1e-4)
    adam = dataclasses.replace(cfg, optimizer="adam")
    assert torch.equal(  # Adam ignores the SGD rule's trust region
        tune_prompts(model, inits, data, adam, 4, max_step_ratio=r)[0],
        tune_prompts(model, inits, data, adam, 4)[0],
    )


def test_batched_sgd_training_equals_training_alone():
    model, data = ToyModel(), toy_data()
    inits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(5)) * 0.1
    cfg = dataclasses.replace(CFG, optimizer="sgd", lr=0.5)
    batched, _ = tune_prompts(model, inits, data, cfg, [11, 12, 13])
    for m in range(3):
        alone, _ = tune_prompts(model, inits[m : m + 1], data, cfg, [11, 12, 13][m])
        # float32 rounding of (M * mean) vs mean, carried through 12 steps at lr 0.5
        assert torch.allclose(batched[m], alone[0], atol=1e-4), m
        assert not torch.allclose(alone[0], inits[m], atol=1e-2)  # it did train


def test_batched_training_with_dev_selection_equals_alone():
    model, data, dev = ToyModel(), toy_data(), toy_data(12, seed=9)
    inits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(6)) * 0.1
    batched, hist_b = tune_prompts(model, inits, data, CFG, [1, 2], dev_batch=dev)
    for m in range(2):
        alone, hist_a = tune_prompts(model, inits[m : m + 1], data, CFG, [1, 2][m], dev_batch=dev)
        assert torch.allclose(batched[m], alone[0], atol=1e-5)
        assert hist_b.best_step[m] == hist_a.best_step[0]
        assert [s for s, _, _ in hist_b.dev[m]] == [4, 8, 12]


def test_training_is_deterministic():
    model, data = ToyModel(), toy_data()
    inits = torch.zeros(2, 4, 5)
    first, h1 = tune_prompts(model, inits, data, CFG, 7)
    second, h2 = tune_prompts(model, inits, data, CFG, 7)
    assert torch.equal(first, second)
    assert h1.train_loss == h2.train_loss


def test_each_prompt_has_its_own_training_curve():
    """A group's curves are per prompt: prompt m's curve is its own minibatch loss, the one it
    has when trained alone, and the group mean is their average."""
    model, data = ToyModel(), toy_data()
    inits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(5)) * 0.5
    seeds = [11, 12, 13]
    _, hist = tune_prompts(model, inits, data, CFG, seeds)
    assert [len(c) for c in hist.prompt_loss] == [CFG.steps] * 3
    assert hist.prompt_loss[0] != hist.prompt_loss[1]
    for m in range(3):
        _, alone = tune_prompts(model, inits[m : m + 1], data, CFG, seeds[m])
        assert hist.prompt_loss[m] == pytest.approx(alone.train_loss, abs=1e-5)
        assert hist.for_prompt(m)["train_loss"] == hist.prompt_loss[m]
    means = [sum(c[s] for c in hist.prompt_loss) / 3 for s in range(CFG.steps)]
    assert hist.train_loss == pytest.approx(means, abs=1e-6)


def test_training_reduces_the_loss():
    model, data = ToyModel(), toy_data()
    inits = torch.zeros(1, 4, 5)
    trained, _ = tune_prompts(model, inits, data, FewShotConfig(steps=60, batch_size=8, lr=0.05), 0)
    assert model.loss(trained[0], data) < model.loss(inits[0], data)


def test_dev_selection_keeps_the_best_dev_prompt():
    model, data, dev = ToyModel(), toy_data(), toy_data(12, seed=9)
    inits = torch.zeros(1, 4, 5)
    trained, hist = tune_prompts(model, inits, data, CFG, 0, dev_batch=dev)
    best = max(hist.dev[0], key=lambda t: (t[1], t[2]))
    assert hist.best_dev[0] is not None
    assert hist.best_dev[0]["accuracy"] == pytest.approx(best[1])
    assert evaluate(model, trained[0], dev, 5)["accuracy"] == pytest.approx(best[1])


def test_metrics_match_sklearn_and_hand_values():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    out = classification_metrics(y_true, y_pred)
    assert out["accuracy"] == pytest.approx(4 / 6)
    # per class F1: c0 P=1/2 R=1/2 -> 1/2; c1 P=2/3 R=1 -> 0.8; c2 P=1 R=1/2 -> 2/3
    assert out["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert out["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert out["n"] == 6


def test_evaluate_chunks_do_not_change_the_result():
    model, data = ToyModel(), toy_data(23)
    prompt = torch.randn(4, 5, generator=torch.Generator().manual_seed(2))
    assert evaluate(model, prompt, data, 4) == evaluate(model, prompt, data, 100)
