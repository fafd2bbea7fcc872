"""Data parallelism over the tasks of a meta-batch with ``torch.distributed`` (``torchrun``).

Every rank draws the same episodes from the same seed and takes the slice
``episodes[rank::world_size]``; each computes the sum of its tasks' meta-gradient terms, and
an all-reduce of ``[grad_sum, query_loss_sum, support_loss_sum, task_count]`` gives every rank
the same mean meta-gradient, so their prompts stay identical without broadcasting. Rank 0
writes checkpoints and outputs. Without an initialised process group everything here is a
no-op for a single process.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return rank_and_world()[0] == 0


def local_slice(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]``."""
    rank, world = rank_and_world()
    return list(items[rank::world])


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum ``values`` over ranks in place (a copy on the backend's device where needed).

    gloo reduces CPU tensors and NCCL CUDA tensors; the result comes back on ``values``'s
    device either way.
    """
    if not is_distributed():
        return values
    backend = dist.get_backend()
    work = values
    if backend == "nccl" and values.device.type != "cuda":
        work = values.cuda()
    elif backend == "gloo" and values.device.type != "cpu":
        work = values.cpu()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    if work is not values:
        values.copy_(work.to(values.device))
    return values


def all_reduce_max(value: int) -> int:
    """The largest ``value`` over ranks (``value`` itself in a single process)."""
    if not is_distributed():
        return value
    work = torch.tensor([value], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        work = work.cuda()
    dist.all_reduce(work, op=dist.ReduceOp.MAX)
    return int(work.item())


def init_from_env() -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL with one GPU per rank (``LOCAL_RANK``) when CUDA is present, else gloo; call it
    before loading the backbone so ``device: auto`` lands on this rank's GPU.

    Returns:
        True when running with more than one rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return is_distributed()


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def reduce_sums(grad_sum: Tensor, scalars: Sequence[float]) -> tuple[Tensor, list[float]]:
    """All-reduce a gradient sum ``Tensor[P, d]`` and a few scalar sums in one call.

    Returns:
        ``(grad_sum, scalars)`` summed over ranks, in float64 for the scalars.
    """
    if not is_distributed():
        return grad_sum, [float(s) for s in scalars]
    flat = torch.cat(
        [
            grad_sum.detach().reshape(-1).to(torch.float64),
            torch.tensor([float(s) for s in scalars], dtype=torch.float64, device=grad_sum.device),
        ]
    )
    all_reduce_sum(flat)
    n = grad_sum.numel()
    total = flat[:n].reshape(grad_sum.shape).to(grad_sum.dtype)
    return total, [float(v) for v in flat[n:].tolist()]
