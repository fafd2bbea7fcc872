"""The evaluation grid: one cell per task x shots x few-shot seed x pre-training seed x init
(x protocol).

Seeds of a cell are derived from its two seeds, never from its initialisation:

* ``split_seed = seed``: which rows are the few-shot train/dev split (:func:`sample_split`);
* ``train_seed = 10_000 + seed``: the order of the training minibatches;
* ``init_seed = pretrain_seed``: the draw of an untrained prompt (random, sampled vocabulary,
  the filler of label words), with the generator PPT and MetaPT of that pre-training seed drew
  their starting prompt from.

So every initialisation of one (task, shots, seed, pretrain_seed) trains on the same rows in the
same order; untrained prompts, like pre-trained ones, are one prompt per pre-training seed; and
the only thing that differs between cells of a group is the starting prompt: a comparison paired
at every level.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from metapt_core.config import InitMethod, PipelineConfig, Protocol

TRAIN_SEED_OFFSET = 10_000


@dataclass(frozen=True)
class Cell:
    """One grid cell: tune a prompt from ``init`` on ``shots`` per class of ``task``."""

    task: str
    init: InitMethod
    shots: int
    seed: int
    pretrain_seed: int = 0
    protocol: Protocol = Protocol.FEWSHOT

    @property
    def split_seed(self) -> int:
        """Seed of the few-shot split (shared by every initialisation)."""
        return self.seed

    @property
    def train_seed(self) -> int:
        """Seed of the minibatch order (shared by every initialisation)."""
        return TRAIN_SEED_OFFSET + self.seed

    @property
    def init_seed(self) -> int:
        """Seed of an untrained initial prompt: the pre-training seed (module docstring)."""
        return self.pretrain_seed

    @property
    def split_key(self) -> tuple[str, int, int]:
        """(task, shots, seed): cells with the same key use the same split."""
        return (self.task, self.shots, self.seed)

    @property
    def cell_id(self) -> str:
        """A stable, readable identifier, e.g. ``mr__metapt_maml__k16__s0__p0`` (``__inner``
        appended for the inner-rule protocol)."""
        tail = "" if self.protocol is Protocol.FEWSHOT else f"__{self.protocol.value}"
        return f"{self.task}__{self.init.value}__k{self.shots}__s{self.seed}__p{self.pretrain_seed}{tail}"

    def to_dict(self) -> dict[str, object]:
        """Plain data of the cell, with its derived seeds."""
        return {
            "cell_id": self.cell_id,
            "task": self.task,
            "init": self.init.value,
            "shots": self.shots,
            "seed": self.seed,
            "pretrain_seed": self.pretrain_seed,
            "protocol": self.protocol.value,
            "split_seed": self.split_seed,
            "train_seed": self.train_seed,
        }


def build_grid(cfg: PipelineConfig) -> list[Cell]:
    """All cells of the configured grid, ordered task, shots, seed, pre-training seed,
    protocol, then initialisation."""
    return [
        Cell(task.name, init, shots, seed, pseed, protocol)
        for task in cfg.tasks
        for shots in cfg.fewshot.shots
        for seed in cfg.fewshot.seeds
        for pseed in cfg.pretrain_seeds
        for protocol in cfg.grid.protocols
        for init in cfg.grid.inits
    ]


def group_cells(cells: Iterable[Cell], batched: bool = True) -> list[list[Cell]]:
    """Group cells that share a split (task, shots, seed), for one batched training pass.

    Args:
        cells: any cells, in any order.
        batched: False gives one group per cell (cells trained one by one).

    Returns:
        Groups in first-seen order; each group's cells in input order, without duplicates.
    """
    groups: dict[tuple[str, int, int], list[Cell]] = {}
    seen: set[str] = set()
    singles: list[list[Cell]] = []
    for cell in cells:
        if cell.cell_id in seen:
            continue
        seen.add(cell.cell_id)
        if batched:
            groups.setdefault(cell.split_key, []).append(cell)
        else:
            singles.append([cell])
    return list(groups.values()) if batched else singles
