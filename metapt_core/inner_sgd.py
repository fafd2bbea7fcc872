"""The inner SGD step every adaptation shares: MAML's inner loop, the meta-objective check, and
the few-shot ``inner`` protocol.

One step from prompt ``theta`` on a batch with loss ``L``, inner learning rate ``alpha`` and
trust-region ratio ``r``:

    g = grad L(theta)
    alpha_eff = min(alpha, r * ||theta|| / ||g||)        (alpha itself when r = 0)
    theta <- theta - alpha_eff * g

``alpha_eff`` is a step size, held constant when differentiating through the step (a
stop-gradient, as gradient clipping is): where the cap is inactive the rule is plain SGD at
``alpha`` and MAML's meta-gradient through it is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

LossFn = Callable[[Tensor, Any], Tensor]


def step_size(grad: Tensor, theta: Tensor, inner_lr: float, max_step_ratio: float) -> Tensor:
    """The inner step size ``min(alpha, r ||theta|| / ||g||)`` of each prompt, detached.

    Args:
        grad: ``Tensor[P, d]`` (one prompt) or ``Tensor[n, P, d]`` (n prompts).
        theta: the prompt the step starts from, same shape.
        inner_lr: ``alpha``.
        max_step_ratio: ``r``; 0 leaves every prompt at ``alpha``.

    Returns:
        ``Tensor[1, 1]`` or ``Tensor[n, 1, 1]``, broadcastable against ``grad``.
    """
    dtype = torch.promote_types(grad.dtype, torch.float32)
    alpha = torch.full(grad.shape[:-2], float(inner_lr), dtype=dtype, device=grad.device)
    if max_step_ratio > 0:
        grad_norm = grad.detach().to(dtype).flatten(-2).norm(dim=-1)
        theta_norm = theta.detach().to(dtype).flatten(-2).norm(dim=-1)
        alpha = torch.minimum(alpha, max_step_ratio * theta_norm / grad_norm.clamp_min(1e-12))
    return alpha[..., None, None]


def sgd_steps(
    prompt: Tensor,
    batch: Any,
    loss_fn: LossFn,
    inner_lr: float,
    steps: int,
    create_graph: bool,
    max_step_ratio: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """``steps`` inner SGD steps on one batch (the module's rule).

    Args:
        prompt: ``Tensor[P, d]`` (or ``[n, P, d]`` when ``loss_fn`` takes grouped prompts); a
            prompt that does not require grad starts from a detached leaf copy.
        batch: what ``loss_fn`` scores.
        loss_fn: ``loss_fn(prompt, batch) -> Tensor[]``.
        inner_lr: ``alpha``.
        steps: ``k``.
        create_graph: keep each step's graph, so the result is differentiable in ``prompt``
            through the inner gradients (second-order MAML); without it each step starts from a
            detached leaf.
        max_step_ratio: ``r``; 0: plain SGD at ``alpha``.

    Returns:
        ``(adapted, first_loss)``: the prompt after the steps (requiring grad) and the detached
        loss at the starting prompt (zero when ``steps`` is 0).
    """
    adapted = prompt if prompt.requires_grad else prompt.detach().requires_grad_(True)
    first_loss = torch.zeros((), device=prompt.device)
    for step in range(steps):
        loss = loss_fn(adapted, batch)
        if step == 0:
            first_loss = loss.detach()
        (grad,) = torch.autograd.grad(loss, adapted, create_graph=create_graph)
        adapted = adapted - step_size(grad, adapted, inner_lr, max_step_ratio) * grad
        if not create_graph:
            adapted = adapted.detach().requires_grad_(True)
    return adapted, first_loss
