"""MAML, FOMAML and Reptile meta-gradients against hand formulas and finite differences."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.maml import Episode, inner_adapt, meta_gradient, meta_gradient_sum
from metapt_core.meta.toy import ToyPromptModel

P, D = 3, 4
ALPHA = 0.2

# --- a quadratic task: L(theta) = 1/2 x^T A x - b^T x, x = vec(theta) ----------------------


def _quadratic(gen: torch.Generator) -> tuple[Tensor, Tensor]:
    m = torch.randn(P * D, P * D, generator=gen, dtype=torch.float64)
    a = m @ m.T / (P * D) + 0.5 * torch.eye(P * D, dtype=torch.float64)
    b = torch.randn(P * D, generator=gen, dtype=torch.float64)
    return a, b


def quad_loss(prompt: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    a, b = batch
    x = prompt.reshape(-1)
    return 0.5 * x @ a @ x - b @ x


def quad_grad(x: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    a, b = batch
    return a @ x - b


def _quad_episodes(n: int, seed: int = 0) -> list[Episode[tuple[Tensor, Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    return [Episode(_quadratic(gen), _quadratic(gen), task_id=i) for i in range(n)]


def _theta(seed: int = 1) -> Tensor:
    return torch.randn(P, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("steps", [1, 2])
def test_inner_adapt_is_plain_sgd(steps: int) -> None:
    (episode,) = _quad_episodes(1)
    theta = _theta()
    x = theta.reshape(-1).clone()
    for _ in range(steps):
        x = x - ALPHA * quad_grad(x, episode.support)
    for create_graph in (True, False):
        adapted = inner_adapt(
            theta.clone().requires_grad_(True),
            episode.support,
            quad_loss,
            ALPHA,
            steps,
            create_graph,
        )
        torch.testing.assert_close(adapted.detach().reshape(-1), x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_quadratic_matches_closed_form(steps: int) -> None:
    """grad = mean_i (I - alpha A_Si)^k (A_Qi x'_i - b_Qi) for quadratics."""
    episodes = _quad_episodes(3)
    theta = _theta()
    expected = torch.zeros(P * D, dtype=torch.float64)
    for ep in episodes:
        x = theta.reshape(-1)
        for _ in range(steps):
            x = x - ALPHA * quad_grad(x, ep.support)
        jac = torch.linalg.matrix_power(
            torch.eye(P * D, dtype=torch.float64) - ALPHA * ep.support[0], steps
        )
        expected += jac.T @ quad_grad(x, ep.query)
    expected /= len(episodes)
    result = meta_gradient(theta, episodes, quad_loss, MetaAlgorithm.MAML, ALPHA, steps)
    torch.testing.assert_close(result.grad.reshape(-1), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("steps", [1, 2])
def test_fomaml_quadratic_matches_hand_formula(steps: int) -> None:
    """grad = mean_i (A_Qi x'_i - b_Qi): the query gradient at the adapted point."""
    episodes = _quad_episodes(3)
    theta = _theta()
    expected = torch.zeros(P * D, dtype=torch.float64)
    for ep in episodes:
        x = theta.reshape(-1)
        for _ in range(steps):
            x = x - ALPHA * quad_grad(x, ep.support)
        expected += quad_grad(x, ep.query)
    expected /= len(episodes)
    result = meta_gradient(theta, episodes, quad_loss, MetaAlgorithm.FOMAML, ALPHA, steps)
    torch.testing.assert_close(result.grad.reshape(-1), expected, rtol=0, atol=1e-10)
    maml = meta_gradient(theta, episodes, quad_loss, MetaAlgorithm.MAML, ALPHA, steps)
    assert (maml.grad - result.grad).abs().max() > 1e-3  # the second-order term is really there


@pytest.mark.parametrize("steps", [1, 2])
def test_reptile_pseudo_gradient_matches_hand_formula(steps: int) -> None:
    """g = beta (theta - mean_i phi_i), phi_i = k SGD steps on S_i then k on Q_i."""
    episodes = _quad_episodes(2)
    theta = _theta()
    beta = 0.7
    phis = []
    for ep in episodes:
        x = theta.reshape(-1)
        for batch in (ep.support, ep.query):
            for _ in range(steps):
                x = x - ALPHA * quad_grad(x, batch)
        phis.append(x)
    expected = beta * (theta.reshape(-1) - torch.stack(phis).mean(0))
    result = meta_gradient(theta, episodes, quad_loss, MetaAlgorithm.REPTILE, ALPHA, steps, beta)
    torch.testing.assert_close(result.grad.reshape(-1), expected, rtol=0, atol=1e-12)
    # Outer SGD at rate eps reproduces Reptile's theta + eps * beta * (mean phi - theta).
    eps = 0.5
    param = torch.nn.Parameter(theta.clone())
    opt = torch.optim.SGD([param], lr=eps)
    param.grad = result.grad.clone()
    opt.step()
    mean_phi = torch.stack(phis).mean(0).reshape(P, D)
    torch.testing.assert_close(param.detach(), theta + eps * beta * (mean_phi - theta))


# --- the toy MLP prompt model: non-quadratic, checked by Hessians and finite differences -------


def _toy_setup(n_tasks: int = 2) -> tuple[ToyPromptModel, list[Episode], Tensor]:
    model = ToyPromptModel(embed_dim=D, n_classes=3, seed=3)
    words = ["good", "bad", "fine", "great", "terrible", "movie", "phone", "plot", "story", "music"]
    gen = torch.Generator().manual_seed(5)
    episodes = []
    for task in range(n_tasks):
        texts = [
            " ".join(words[int(i)] for i in torch.randint(0, len(words), (4,), generator=gen))
            for _ in range(8)
        ]
        labels = torch.randint(0, 3, (8,), generator=gen).tolist()
        batch = model.encode(texts, labels)
        episodes.append(Episode(batch.select(range(4)), batch.select(range(4, 8)), task))
    theta = _theta(7)
    return model, episodes, theta


def _maml_objective(
    model: ToyPromptModel, episodes: list[Episode], steps: int, theta: Tensor
) -> Tensor:
    """F(theta) = mean_i L_Qi(theta'_i(theta)), evaluated with no autograd tricks."""
    total = torch.zeros((), dtype=torch.float64)
    for ep in episodes:
        adapted = theta
        for _ in range(steps):
            grad = torch.func.grad(model.loss)(adapted, ep.support)
            adapted = adapted - ALPHA * grad
        total = total + model.loss(adapted, ep.query)
    return total / len(episodes)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_toy_matches_hessian_unrolled_reference(steps: int) -> None:
    """grad = mean_i prod_j (I - alpha H_Si(theta^(j))) grad L_Qi(theta'_i), unrolled by hand."""
    model, episodes, theta = _toy_setup()
    expected = torch.zeros(P * D, dtype=torch.float64)
    for ep in episodes:

        def support_loss(flat: Tensor, ep: Episode = ep) -> Tensor:
            return model.loss(flat.reshape(P, D), ep.support)

        points = [theta.reshape(-1)]
        for _ in range(steps):
            x = points[-1]
            points.append(x - ALPHA * torch.func.grad(support_loss)(x))
        vec = torch.func.grad(lambda f, ep=ep: model.loss(f.reshape(P, D), ep.query))(points[-1])
        for x in reversed(points[:-1]):
            hess = torch.autograd.functional.hessian(support_loss, x)
            vec = (torch.eye(P * D, dtype=torch.float64) - ALPHA * hess) @ vec
        expected += vec
    expected /= len(episodes)
    result = meta_gradient(theta, episodes, model.loss, MetaAlgorithm.MAML, ALPHA, steps)
    torch.testing.assert_close(result.grad.reshape(-1), expected, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_toy_matches_central_finite_differences(steps: int) -> None:
    model, episodes, theta = _toy_setup()
    result = meta_gradient(theta, episodes, model.loss, MetaAlgorithm.MAML, ALPHA, steps)
    h = 1e-5
    fd = torch.zeros(P * D, dtype=torch.float64)
    for i in range(P * D):
        bump = torch.zeros(P * D, dtype=torch.float64)
        bump[i] = h
        plus = _maml_objective(model, episodes, steps, theta + bump.reshape(P, D))
        minus = _maml_objective(model, episodes, steps, theta - bump.reshape(P, D))
        fd[i] = (plus - minus) / (2 * h)
    torch.testing.assert_close(result.grad.reshape(-1), fd, rtol=1e-6, atol=1e-8)
    fomaml = meta_gradient(theta, episodes, model.loss, MetaAlgorithm.FOMAML, ALPHA, steps)
    assert (fomaml.grad.reshape(-1) - fd).abs().max() > 1e-4


def test_losses_reported_and_backbone_untouched() -> None:
    model, episodes, theta = _toy_setup()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for algorithm in MetaAlgorithm:
        out = meta_gradient(theta, episodes, model.loss, algorithm, ALPHA, 1)
        expected_support = sum(float(model.loss(theta, ep.support)) for ep in episodes) / 2
        assert out.support_loss == pytest.approx(expected_support, rel=1e-12)
        assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    total = meta_gradient_sum(theta, episodes, model.loss, MetaAlgorithm.MAML, ALPHA, 1)
    assert total.tasks == 2
    with pytest.raises(ValueError):
        meta_gradient(theta, [], model.loss, MetaAlgorithm.MAML, ALPHA, 1)
