"""Torch threads shared among grid workers (metapt_core.threads, flows.grid.worker_threads)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from metapt_core.config import GridConfig, TaskRunner
from metapt_core.errors import ConfigError
from metapt_core.threads import available_cores, threads_per_worker, torch_threads


@pytest.mark.parametrize(
    ("workers", "cores", "want"), [(1, 2, 2), (2, 2, 1), (3, 2, 1), (2, 16, 8), (3, 16, 5)]
)
def test_threads_per_worker_shares_the_cores(workers: int, cores: int, want: int) -> None:
    assert threads_per_worker(workers, cores) == want


def test_threads_per_worker_rejects_no_workers() -> None:
    with pytest.raises(ValueError, match="workers"):
        threads_per_worker(0, 4)


def test_available_cores_follows_the_affinity() -> None:
    assert available_cores() == len(os.sched_getaffinity(0))


def test_torch_threads_reach_new_worker_threads_and_are_restored() -> None:
    before = torch.get_num_threads()

    def seen(_: int) -> int:
        torch.ones(64, 64).sum()  # a torch call: the thread takes the process-wide count
        return torch.get_num_threads()

    with torch_threads(1), ThreadPoolExecutor(max_workers=2) as pool:
        assert list(pool.map(seen, range(2))) == [1, 1]
    assert torch.get_num_threads() == before


def test_worker_threads_split_the_cores_for_thread_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.grid import worker_threads

    monkeypatch.delenv("METAPT_TORCH_THREADS", raising=False)
    before = torch.get_num_threads()
    grid = GridConfig(runner=TaskRunner.THREAD, max_workers=2)
    with worker_threads(grid) as n:
        assert n == threads_per_worker(2)
        assert torch.get_num_threads() == n
    assert torch.get_num_threads() == before
    with worker_threads(
        GridConfig(runner=TaskRunner.THREAD, max_workers=2, threads_per_worker=3)
    ) as n:
        assert n == 3 and torch.get_num_threads() == 3
    assert torch.get_num_threads() == before


def test_worker_threads_pass_process_workers_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.grid import worker_threads

    monkeypatch.delenv("METAPT_TORCH_THREADS", raising=False)
    with worker_threads(
        GridConfig(runner=TaskRunner.PROCESS, max_workers=2, threads_per_worker=1)
    ) as n:
        assert n == 1 and os.environ["METAPT_TORCH_THREADS"] == "1"
    assert "METAPT_TORCH_THREADS" not in os.environ


def test_worker_threads_leave_a_preset_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.grid import worker_threads

    monkeypatch.setenv("METAPT_TORCH_THREADS", "2")
    before = torch.get_num_threads()
    with worker_threads(GridConfig(runner=TaskRunner.THREAD, max_workers=4)) as n:
        assert n == 2 and torch.get_num_threads() == before
    assert os.environ["METAPT_TORCH_THREADS"] == "2"


def test_negative_threads_per_worker_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="grid.threads_per_worker"):
        GridConfig(threads_per_worker=-1)
