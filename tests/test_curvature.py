"""The curvature-sized inner step, the trust region and the outer schedule, against references.

On a family of quadratic tasks with known curvature, MAML's meta-objective is itself a quadratic
whose Hessian is ``(I - alpha A) A (I - alpha A)``: an inner rate past ``2 / lambda_max`` makes
that Hessian large and a fixed outer step diverges, while ``alpha = 1 / lambda_max`` keeps it
small and the same outer step converges.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metapt_core.config import MetaAlgorithm
from metapt_core.inner_sgd import step_size
from metapt_core.meta.curvature import (
    curvature_inner_lr,
    curvature_lambda,
    top_hessian_eigenvalue,
)
from metapt_core.meta.maml import Episode, inner_adapt, meta_gradient
from metapt_core.pretraining.loop import lr_factor

P, D = 2, 3


def _loss(prompt: Tensor, batch: tuple[Tensor, Tensor]) -> Tensor:
    """``1/2 (x - c)^T A (x - c)`` with ``x = vec(prompt)``."""
    a, c = batch
    x = prompt.reshape(-1) - c
    return 0.5 * x @ a @ x


def _family(
    lambdas: list[float], tasks: int, seed: int = 0
) -> list[Episode[tuple[Tensor, Tensor]]]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(P * D, P * D, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor(lambdas, dtype=torch.float64)) @ q.T
    shared = 3.0 * torch.randn(P * D, generator=gen, dtype=torch.float64)
    centres = [shared + 0.3 * torch.randn(P * D, generator=gen, dtype=torch.float64)
               for _ in range(tasks)]  # fmt: skip
    return [Episode((a, c), (a, c), task_id=i) for i, c in enumerate(centres)]


LAMBDAS = [20.0, 8.0, 4.0, 2.0, 1.0, 0.5]


def test_power_iteration_finds_the_largest_eigenvalue() -> None:
    (episode,) = _family(LAMBDAS, 1)
    theta = torch.zeros(P, D, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    value = top_hessian_eigenvalue(theta, episode.support, _loss, 200, gen, rtol=1e-12)
    assert math.isclose(value, 20.0, rel_tol=1e-6)
    assert math.isclose(
        curvature_lambda(theta, [episode.support] * 2, _loss, 200, (0, 0, 1)), 20.0, rel_tol=1e-3
    )


def test_curvature_rule_is_the_smaller_of_the_two_rates() -> None:
    assert curvature_inner_lr(0.3, 20.0, 1.0) == 0.05
    assert curvature_inner_lr(0.01, 20.0, 1.0) == 0.01
    assert curvature_inner_lr(0.3, 20.0, 0.0) == 0.3  # off
    assert curvature_inner_lr(0.3, 0.0, 1.0) == 0.3  # flat: nothing to size against


def _meta_objective(theta: Tensor, episodes: list[Episode], alpha: float) -> float:
    total = 0.0
    for e in episodes:
        adapted = inner_adapt(theta.clone().requires_grad_(True), e.support, _loss, alpha, 1, False)
        total += float(_loss(adapted.detach(), e.query))
    return total / len(episodes)


def _train(alpha: float, episodes: list[Episode], steps: int = 100, lr: float = 0.1) -> list[float]:
    theta = torch.zeros(P, D, dtype=torch.float64)
    curve = [_meta_objective(theta, episodes, alpha)]
    for _ in range(steps):
        grad = meta_gradient(theta, episodes, _loss, MetaAlgorithm.MAML, alpha, 1).grad
        theta = theta - lr * grad
        curve.append(_meta_objective(theta, episodes, alpha))
        if not math.isfinite(curve[-1]) or curve[-1] > 1e12:
            break
    return curve


def test_old_rate_diverges_where_the_curvature_rate_converges() -> None:
    episodes = _family(LAMBDAS, 4)
    old_alpha = 0.3  # what a gain sweep may pick: alpha * lambda_max = 6, past the limit of 2
    old = _train(old_alpha, episodes)
    theta = torch.zeros(P, D, dtype=torch.float64)
    lam = curvature_lambda(theta, [e.support for e in episodes], _loss, 100, (0, 0, 1))
    new_alpha = curvature_inner_lr(old_alpha, lam, 1.0)
    assert math.isclose(new_alpha, 1 / 20.0, rel_tol=1e-3)
    new = _train(new_alpha, episodes)
    assert old[-1] > 100 * old[0] or not math.isfinite(old[-1])  # the outer loop blew up
    assert new[-1] < 0.05 * new[0]  # and here it fell
    assert all(b <= a + 1e-12 for a, b in zip(new, new[1:], strict=False))  # monotonically


def test_trust_region_bounds_each_inner_step() -> None:
    (episode,) = _family(LAMBDAS, 1)
    theta = torch.full((P, D), 0.1, dtype=torch.float64)
    grad = torch.func.grad(lambda t: _loss(t, episode.support))(theta)
    capped = step_size(grad, theta, 10.0, 0.25)
    assert math.isclose(float((capped * grad).norm()), 0.25 * float(theta.norm()), rel_tol=1e-12)
    assert float(step_size(grad, theta, 1e-6, 0.25)) == 1e-6  # inactive: alpha itself
    grouped = torch.stack([grad, 1e-9 * grad])
    both = step_size(grouped, torch.stack([theta, theta]), 10.0, 0.25)
    assert both.shape == (2, 1, 1) and float(both[1]) == 10.0 and float(both[0]) < 10.0
    adapted = inner_adapt(theta.clone().requires_grad_(True), episode.support, _loss, 10.0, 1,
                          False, max_step_ratio=0.25)  # fmt: skip
    assert math.isclose(
        float((adapted.detach() - theta).norm()), 0.25 * float(theta.norm()), rel_tol=1e-12
    )


def test_outer_schedule_warms_up_then_decays_to_its_fraction() -> None:
    total, warm, final = 30, 5, 0.1
    factors = [lr_factor(t, total, warm, final) for t in range(1, total + 1)]
    assert factors[:5] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert math.isclose(factors[-1], final) and all(
        b <= a for a, b in zip(factors[4:], factors[5:], strict=False)
    )
    assert math.isclose(lr_factor(5 + 12.5, total, warm, final), (1 + final) / 2)
    assert [lr_factor(t, total, 0, 1.0) for t in (1, 15, 30)] == [1.0, 1.0, 1.0]
