"""MAML, first-order MAML and Reptile on a soft prompt, as pure functions.

The soft prompt ``theta`` (``Tensor[P, d]``) is the only fast weight: the frozen backbone is
reached through ``loss_fn(prompt, batch) -> scalar`` and is never copied (learn2learn's
``maml_update`` idea with the prompt alone as the adapted parameter).

Notation, for task ``i`` of a meta-batch of ``n`` tasks with support batch ``S_i`` and query
batch ``Q_i``, inner learning rate ``alpha`` and ``k`` inner steps:

    theta_i^(0) = theta
    theta_i^(j+1) = theta_i^(j) - alpha * grad L_{S_i}(theta_i^(j))        (inner SGD)
    theta'_i = theta_i^(k)

Each algorithm returns a (pseudo-)gradient ``g`` so that one outer optimiser (Adam or SGD)
serves all three: ``theta <- OuterOpt(theta, g)``.

    MAML    g = d/dtheta (1/n) sum_i L_{Q_i}(theta'_i(theta))      (second order: through the
                                                                  inner steps, Finn et al. 2017)
    FOMAML  g = (1/n) sum_i grad L_{Q_i}(theta'_i)                 (Jacobian of theta' dropped)
    Reptile g = beta * (theta - (1/n) sum_i phi_i)                 (Nichol et al. 2018)

With ``meta.max_step_ratio`` r > 0 each inner step is a trust region: task i's step size is

    alpha_i^(j) = min(alpha, r * ||theta_i^(j)|| / ||grad L_{S_i}(theta_i^(j))||)

so that no step moves the prompt by more than r times its own norm (the step itself is
:mod:`metapt_core.inner_sgd`, shared with the meta-objective check and the few-shot ``inner``
protocol). ``alpha_i^(j)`` is a step size, held constant in the meta-gradient (a stop-gradient,
as gradient clipping is); where the cap is inactive the rule is plain SGD at alpha and the
meta-gradient is MAML's, exactly.

where ``phi_i`` is ``theta`` after ``k`` SGD steps on ``S_i`` followed by ``k`` SGD steps on
``Q_i`` (both batches, so Reptile sees the same examples as MAML), and ``beta`` is
``meta.reptile_step``. With outer SGD at rate ``eps`` this is Reptile's
``theta <- theta + eps * beta * (mean_i phi_i - theta)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

import torch
from torch import Tensor

from metapt_core.config import MetaAlgorithm
from metapt_core.inner_sgd import LossFn, sgd_steps, step_size

BatchT = TypeVar("BatchT")


@dataclass(frozen=True)
class Episode(Generic[BatchT]):
    """One task's support and query batches (disjoint rows of the same shard)."""

    support: BatchT
    query: BatchT
    task_id: int = 0


class MetaGradient(NamedTuple):
    """A meta-gradient and the losses seen while computing it.

    ``grad`` is ``Tensor[P, d]``; ``query_loss`` is the mean over tasks of the query loss at the
    adapted prompt ``L_{Q_i}(theta'_i)``; ``support_loss`` the mean of ``L_{S_i}(theta)`` before
    adaptation.
    """

    grad: Tensor
    query_loss: float
    support_loss: float


class MetaGradientSum(NamedTuple):
    """Per-task sums (not means) of a meta-gradient and its losses, for all-reduce.

    ``inner_shift`` is the sum over tasks of ``||theta'_i - theta||_F``, the size of the inner
    update (for one step, ``||alpha * grad L_{S_i}(theta)||``; for Reptile ``||phi_i - theta||``).
    """

    grad: Tensor
    query_loss: float
    support_loss: float
    tasks: int
    inner_shift: float = 0.0


def _shift(adapted: Tensor, prompt: Tensor) -> float:
    """``sum_i ||adapted_i - prompt||_F`` over the leading task axis of grouped ``[n, P, d]``
    copies, or ``||adapted - prompt||_F`` for one ``[P, d]`` prompt."""
    diff = (adapted.detach() - prompt.detach()).float()
    if diff.dim() == 3:
        return float(diff.flatten(1).norm(dim=1).sum())
    return float(diff.norm())


@contextlib.contextmanager
def second_order_attention(enabled: bool = True) -> Iterator[None]:
    """Run SDPA attention on its math kernel, the one with a double backward.

    The fused CPU flash and CUDA flash/efficient kernels raise "derivative for
    ..._backward is not implemented" when differentiated twice, which second-order MAML does.
    """
    if not enabled:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def inner_adapt(
    prompt: Tensor,
    support: Any,
    loss_fn: LossFn,
    inner_lr: float,
    steps: int,
    create_graph: bool,
    max_step_ratio: float = 0.0,
) -> Tensor:
    """Adapt a prompt to one batch by SGD: ``theta <- theta - alpha_j * grad L(theta)``.

    Args:
        prompt: ``Tensor[P, d]`` requiring grad (a leaf, or a function of the meta-parameters
            when ``create_graph``).
        support: the batch the inner loss is computed on.
        loss_fn: ``loss_fn(prompt, batch) -> Tensor[]``.
        inner_lr: ``alpha``.
        steps: number of SGD steps ``k``.
        create_graph: keep the graph of each step, so the result is differentiable in
            ``prompt`` through the inner gradients (second-order MAML). Without it each step
            starts from a detached copy.
        max_step_ratio: ``r`` of the trust region (module docstring); 0: plain SGD at alpha.

    Returns:
        The adapted prompt ``theta'``, ``Tensor[P, d]``, requiring grad.
    """
    adapted, _ = sgd_steps(prompt, support, loss_fn, inner_lr, steps, create_graph, max_step_ratio)
    return adapted


def maml_task_loss(
    prompt: Tensor,
    episode: Episode[Any],
    loss_fn: LossFn,
    inner_lr: float,
    inner_steps: int,
    create_graph: bool = True,
    max_step_ratio: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The query loss after adapting on the support: ``L_Q(theta'(theta))``.

    Args:
        prompt: the meta-parameters ``theta``, ``Tensor[P, d]`` requiring grad.
        episode: the task's support and query batches.
        loss_fn: ``loss_fn(prompt, batch) -> Tensor[]``.
        inner_lr: ``alpha``.
        inner_steps: ``k``.
        create_graph: True for MAML (the query loss is differentiable in ``theta`` through
            the inner steps); False for FOMAML (the adapted prompt is a fresh leaf).
        max_step_ratio: ``r`` of the trust region (module docstring); 0: plain SGD.

    Returns:
        ``(query_loss, support_loss, adapted)``: the query loss at ``theta'``, the detached
        support loss at ``theta`` (before adaptation) and ``theta'`` itself (``Tensor[P, d]``).
    """
    adapted, support_loss = sgd_steps(
        prompt, episode.support, loss_fn, inner_lr, inner_steps, create_graph, max_step_ratio
    )
    return loss_fn(adapted, episode.query), support_loss, adapted


def maml_vjp_gradient(
    prompt: Tensor,
    support: Any,
    query: Any,
    loss_fn: LossFn,
    inner_lr: float,
    inner_steps: int,
    max_step_ratio: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Exact second-order MAML gradient, the query gradient first, then back through the steps.

    With ``theta_(j+1) = theta_j - alpha g_j``, ``g_j = grad L_S(theta_j)`` and
    ``H_j = grad^2 L_S(theta_j)``, the chain rule gives

        v_k = grad L_Q(theta_k),    v_j = v_(j+1) - alpha_j * H_j v_(j+1),    dL_Q/dtheta = v_0,

    where ``H_j v`` is the vector-Jacobian product of ``g_j`` (a Hessian-vector product, exact,
    no approximation). The query pass is first-order, so it runs on the fused attention kernels
    and its graph is freed before any product through the support graphs; only the support
    passes, which are differentiated twice, run on the math kernel. This equals
    ``d/dtheta L_Q(theta_k(theta))`` computed through one graph (tested).

    ``alpha_j`` is the step size of :func:`step_size` (``alpha`` unless the trust region caps
    it; a constant of the rule either way).

    Args:
        prompt: ``theta``, ``Tensor[P, d]`` (or ``[n, P, d]`` of grouped tasks when ``loss_fn``
            sums per-task losses).

    Returns:
        ``(grad, query_loss, support_loss, adapted)``: the meta-gradient (detached, shape of
        ``prompt``), the query loss at ``theta_k``, the support loss at ``theta`` and
        ``theta_k`` (detached).
    """
    current = prompt.detach().requires_grad_(True)
    steps: list[tuple[Tensor, Tensor, Tensor]] = []
    support_loss = torch.zeros((), device=prompt.device)
    for step in range(inner_steps):
        with second_order_attention():
            loss = loss_fn(current, support)
            (grad,) = torch.autograd.grad(loss, current, create_graph=True)
        if step == 0:
            support_loss = loss.detach()
        alpha = step_size(grad, current, inner_lr, max_step_ratio)
        steps.append((current, grad, alpha))
        current = (current - alpha * grad).detach().requires_grad_(True)
    query_loss = loss_fn(current, query)
    (vector,) = torch.autograd.grad(query_loss, current)
    for theta_j, grad_j, alpha_j in reversed(steps):
        (hvp,) = torch.autograd.grad(grad_j, theta_j, grad_outputs=vector)
        vector = vector - alpha_j * hvp
    return vector.detach(), query_loss.detach(), support_loss, current.detach()


def grouped_meta_gradient_sum(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    loss_fn: LossFn,
    concat: Callable[[Sequence[Any]], Any],
    algorithm: MetaAlgorithm,
    inner_lr: float,
    inner_steps: int,
    max_step_ratio: float = 0.0,
) -> MetaGradientSum:
    """:func:`meta_gradient_sum` for MAML and FOMAML with the n tasks in grouped passes.

    Task i gets its own copy ``theta_i`` of ``theta`` (``Tensor[n, P, d]``); the supports (and
    the queries) of all tasks form one batch whose rows are grouped by task, and with
    ``loss_fn`` the mean over rows, ``n * loss = sum_i L_{S_i}(theta_i)`` when every task has
    the same number of rows. So ``d(n * loss)/d theta_i`` is task i's own gradient, and the
    sum over i of the per-task meta-gradients is the sum over the copies' gradients. One pass
    per inner step and one for the queries replace n of each.

    Requires a ``loss_fn`` that takes ``[n, P, d]`` prompts for rows grouped by prompt
    (``PromptModel.accepts_grouped_prompts``) and equal support and query sizes.
    """
    n = len(episodes)
    support = concat([e.support for e in episodes])
    query = concat([e.query for e in episodes])
    copies = prompt.detach().unsqueeze(0).repeat(n, 1, 1)

    def summed(theta: Tensor, batch: Any) -> Tensor:
        return loss_fn(theta, batch) * n

    if MetaAlgorithm(algorithm) is MetaAlgorithm.MAML:
        grads, query_loss, support_loss, adapted = maml_vjp_gradient(
            copies, support, query, summed, inner_lr, inner_steps, max_step_ratio
        )
    else:
        query_sum, support_sum, adapted = maml_task_loss(
            copies,
            Episode(support, query),
            summed,
            inner_lr,
            inner_steps,
            create_graph=False,
            max_step_ratio=max_step_ratio,
        )
        (grads,) = torch.autograd.grad(query_sum, adapted)
        query_loss, support_loss = query_sum.detach(), support_sum
    return MetaGradientSum(
        grads.sum(0).detach(),
        float(query_loss),
        float(support_loss),
        n,
        _shift(adapted, copies),
    )


def reptile_adapt(
    prompt: Tensor, episode: Episode[Any], loss_fn: LossFn, inner_lr: float, inner_steps: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Reptile's inner trajectory: ``k`` SGD steps on the support, then ``k`` on the query.

    Returns:
        ``(phi, query_loss, support_loss)``: the adapted prompt ``phi`` (``Tensor[P, d]``,
        detached), the query loss at its first visit (after the ``k`` support steps, so the
        same quantity MAML reports) and the support loss at ``theta``.
    """
    phi, support_loss = sgd_steps(prompt.detach(), episode.support, loss_fn, inner_lr,
                                  inner_steps, create_graph=False)  # fmt: skip
    phi, query_loss = sgd_steps(phi.detach(), episode.query, loss_fn, inner_lr, inner_steps,
                                create_graph=False)  # fmt: skip
    return phi.detach(), query_loss, support_loss


def task_meta_gradient(
    prompt: Tensor,
    episode: Episode[Any],
    loss_fn: LossFn,
    algorithm: MetaAlgorithm,
    inner_lr: float,
    inner_steps: int,
    reptile_step: float = 1.0,
    max_step_ratio: float = 0.0,
) -> tuple[Tensor, float, float, float]:
    """One task's term of the meta-gradient (see the module docstring for the equations).

    Args:
        prompt: ``theta``, ``Tensor[P, d]`` (its own grad state is ignored).
        max_step_ratio: the trust region of MAML's and FOMAML's inner steps (Reptile: unused).

    Returns:
        ``(grad, query_loss, support_loss, shift)`` with ``grad`` a detached ``Tensor[P, d]``
        and ``shift`` the size ``||theta' - theta||_F`` of the inner update (Reptile:
        ``||phi - theta||_F``, its whole support-then-query trajectory).
    """
    algorithm = MetaAlgorithm(algorithm)
    theta = prompt.detach().requires_grad_(True)
    if algorithm is MetaAlgorithm.MAML:
        grad, query_loss, support_loss, adapted = maml_vjp_gradient(
            theta, episode.support, episode.query, loss_fn, inner_lr, inner_steps, max_step_ratio
        )
        shift = _shift(adapted, theta)
    elif algorithm is MetaAlgorithm.FOMAML:
        query_loss, support_loss, adapted = maml_task_loss(
            theta, episode, loss_fn, inner_lr, inner_steps, False, max_step_ratio
        )
        # The adapted prompt is a leaf: this is grad L_Q at theta', not through it.
        (grad,) = torch.autograd.grad(query_loss, adapted)
        shift = _shift(adapted, theta)
    else:
        phi, query_loss, support_loss = reptile_adapt(
            theta, episode, loss_fn, inner_lr, inner_steps
        )
        grad = reptile_step * (theta.detach() - phi)
        shift = _shift(phi, theta)
    return grad.detach(), float(query_loss.detach()), float(support_loss), shift


def meta_gradient_sum(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    loss_fn: LossFn,
    algorithm: MetaAlgorithm,
    inner_lr: float,
    inner_steps: int,
    reptile_step: float = 1.0,
    concat: Callable[[Sequence[Any]], Any] | None = None,
    max_step_ratio: float = 0.0,
) -> MetaGradientSum:
    """The sum over tasks of the per-task meta-gradient terms and losses.

    Tasks are differentiated one at a time, so memory holds one task's graph, not the
    meta-batch's, unless ``concat`` is given: then MAML and FOMAML run the tasks in grouped
    passes (:func:`grouped_meta_gradient_sum`; same result, n times the graph). Sums (not
    means) let data-parallel ranks all-reduce and then divide by the total task count.

    Returns:
        :class:`MetaGradientSum` with ``grad`` ``Tensor[P, d]`` (zeros when no episodes).
    """
    algorithm = MetaAlgorithm(algorithm)
    if concat is not None and episodes and algorithm is not MetaAlgorithm.REPTILE:
        sizes = {(len(e.support), len(e.query)) for e in episodes}
        if len(sizes) == 1:
            return grouped_meta_gradient_sum(
                prompt, episodes, loss_fn, concat, algorithm, inner_lr, inner_steps, max_step_ratio
            )
    grad_sum = torch.zeros_like(prompt, dtype=prompt.dtype).detach()
    query_sum = 0.0
    support_sum = 0.0
    shift_sum = 0.0
    for episode in episodes:
        grad, query_loss, support_loss, shift = task_meta_gradient(
            prompt, episode, loss_fn, algorithm, inner_lr, inner_steps, reptile_step, max_step_ratio
        )
        grad_sum += grad
        query_sum += query_loss
        support_sum += support_loss
        shift_sum += shift
    return MetaGradientSum(grad_sum, query_sum, support_sum, len(episodes), shift_sum)


def meta_gradient(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    loss_fn: LossFn,
    algorithm: MetaAlgorithm,
    inner_lr: float,
    inner_steps: int,
    reptile_step: float = 1.0,
    concat: Callable[[Sequence[Any]], Any] | None = None,
    max_step_ratio: float = 0.0,
) -> MetaGradient:
    """The meta-gradient of a meta-batch, averaged over its tasks.

    MAML: ``g = d/dtheta (1/n) sum_i L_{Q_i}(theta'_i(theta))``; FOMAML:
    ``g = (1/n) sum_i grad L_{Q_i}(theta'_i)``; Reptile: ``g = beta (theta - (1/n) sum_i phi_i)``
    (module docstring). The result is meant for ``prompt.grad`` before an outer optimiser step.

    Args:
        prompt: ``theta``, ``Tensor[P, d]``.
        episodes: the meta-batch, one :class:`Episode` per task (non-empty).
        loss_fn: ``loss_fn(prompt, batch) -> Tensor[]``, differentiable twice for MAML.
        algorithm: which meta-learner.
        inner_lr: ``alpha``.
        inner_steps: ``k``.
        reptile_step: ``beta`` (Reptile only).
        concat: joins batches (``EncodedBatch.concat``): MAML/FOMAML tasks in grouped passes.
        max_step_ratio: ``r`` of the inner steps' trust region (module docstring); 0: off.

    Returns:
        :class:`MetaGradient` ``(grad: Tensor[P, d], query_loss, support_loss)``.
    """
    if not episodes:
        raise ValueError("meta_gradient needs at least one episode")
    total = meta_gradient_sum(
        prompt,
        episodes,
        loss_fn,
        algorithm,
        inner_lr,
        inner_steps,
        reptile_step,
        concat,
        max_step_ratio,
    )
    n = total.tasks
    return MetaGradient(total.grad / n, total.query_loss / n, total.support_loss / n)
