"""Intra-op threads of torch for workers that share this machine's cores.

A thread-pool grid of W workers, each running torch's OpenMP kernels with the process's default
of C threads (C = the cores this process may use), asks for W*C threads on C cores: the kernels'
threads then wait on each other at every barrier. ``threads_per_worker`` gives each worker
``max(1, C // W)`` instead; ``benchmarks/bench_grid_batching.py`` measures both.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """``max(1, cores // workers)``: intra-op threads that keep ``workers`` within ``cores``.

    Args:
        workers: concurrent workers (>= 1).
        cores: cores to share; None: :func:`available_cores`.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return max(1, (available_cores() if cores is None else cores) // workers)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)``; the previous count is restored after.

    Threads started inside the block (a task runner's workers) take ``n`` on their first torch
    call: torch copies the process-wide count into each new thread's OpenMP setting.
    """
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
