"""The inner step sized to the curvature of the support loss.

One SGD step ``theta' = theta - alpha g`` on a loss whose Hessian ``H`` has largest eigenvalue
``lambda_max`` overshoots along that eigenvector when ``alpha > 2 / lambda_max``, and MAML's
meta-gradient carries the factor ``(I - alpha H)``, whose norm exceeds 1 there too: the outer
loop then amplifies instead of damping. The rule here keeps

    alpha_t = min(alpha_0, c / lambda_max(theta_t))

with ``alpha_0`` the configured or calibrated rate and ``c`` ``meta.curvature_scale`` (1: the
step that minimises a quadratic along its sharpest direction), ``lambda_max`` re-estimated as
the prompt moves. ``lambda_max`` is found by power iteration on Hessian-vector products
(Pearlmutter's double backward), which converges to the eigenvalue of largest magnitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metapt_core.meta.maml import LossFn, second_order_attention


def top_hessian_eigenvalue(
    prompt: Tensor,
    batch: Any,
    loss_fn: LossFn,
    iterations: int = 8,
    generator: torch.Generator | None = None,
    rtol: float = 1e-2,
) -> float:
    """The eigenvalue of largest magnitude of ``grad^2 L(theta)`` by power iteration.

    ``v <- H v / ||H v||``, ``lambda = v^T H v`` (the Rayleigh quotient of the unit ``v``), where
    ``H v`` is the vector-Jacobian product of ``g = grad L(theta)`` (one double backward
    through the graph of ``g``, kept between iterations). Stops early when ``lambda`` changes by
    less than ``rtol`` of itself.

    Args:
        prompt: ``theta``, ``Tensor[P, d]``.
        batch: the batch ``L`` is computed on (a support batch).
        loss_fn: ``loss_fn(prompt, batch) -> Tensor[]``, twice differentiable.
        iterations: at most this many Hessian-vector products.
        generator: seeds the starting vector (deterministic per step and resume).

    Returns:
        ``lambda`` (signed; its magnitude is the largest of the spectrum's).
    """
    theta = prompt.detach().requires_grad_(True)
    with second_order_attention():
        loss = loss_fn(theta, batch)
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
    start = torch.randn(theta.shape, generator=generator, dtype=torch.float32)
    vector = (start / start.norm()).to(theta.device, theta.dtype)
    value = 0.0
    for step in range(iterations):
        last = step == iterations - 1
        (product,) = torch.autograd.grad(grad, theta, grad_outputs=vector, retain_graph=not last)
        new = float((product.float() * vector.float()).sum())
        norm = float(product.float().norm())
        converged = step > 0 and abs(new - value) <= rtol * abs(new)
        value = new
        if converged or last or norm == 0.0:
            break
        vector = product.detach() / norm
    return value


def curvature_lambda(
    prompt: Tensor,
    supports: Sequence[Any],
    loss_fn: LossFn,
    iterations: int,
    seed: Sequence[int],
) -> float:
    """``max_s |lambda_s|`` over the support batches ``supports``, ``lambda_s`` the eigenvalue of
    largest magnitude of ``L_s``'s Hessian (0.0 when none).

    ``seed`` (e.g. ``(meta.seed, stream, step)``) seeds the starting vectors, so the estimate of
    a step is the same in every process and after a resume.
    """
    state = np.random.SeedSequence([int(s) for s in seed]).generate_state(1, dtype=np.uint64)
    generator = torch.Generator().manual_seed(int(state[0]) & (2**63 - 1))
    values = [
        abs(top_hessian_eigenvalue(prompt, batch, loss_fn, iterations, generator))
        for batch in supports
    ]
    return max(values, default=0.0)


def curvature_inner_lr(base: float, lambda_max: float, scale: float) -> float:
    """``min(alpha_0, c / lambda_max)``; ``alpha_0`` when ``c`` is 0 or ``lambda_max`` is not
    positive and finite."""
    if scale <= 0 or not lambda_max > 0 or lambda_max == float("inf"):
        return float(base)
    return min(float(base), scale / lambda_max)
