"""Pre-training data: shards as encoded tasks, and the validation episodes of a run.

A run's clusters are split once per seed (:func:`metapt_core.pretraining.episodes.hold_out_clusters`)
into training clusters and ``meta.val_clusters`` unseen ones. Validation has two parts, each a
fixed list of episodes: held-out rows of the training clusters (``val``, adaptation to a seen
task) and whole unseen clusters (``unseen``, adaptation to a new task, what an initialisation
is for). PPT and MetaPT of one seed read the same :class:`PretrainData`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from metapt_core.config import MetaConfig
from metapt_core.meta.maml import Episode
from metapt_core.pretraining.episodes import (
    UNSEEN_STREAM,
    VAL_STREAM,
    AuxTask,
    EpisodeRows,
    fixed_episodes,
    hold_out_clusters,
    load_aux_tasks,
)
from metapt_core.specs import EpisodeSettings, PoolFormat
from metapt_core.store import ArtifactRef


class PromptObjective(Protocol):
    """What the trainers need of a model (:class:`metapt_core.lm.PromptModel` provides it)."""

    @property
    def device(self) -> torch.device: ...

    def task_format(self, template: str, verbalizer: Sequence[str], name: str) -> Any: ...

    def encode(self, texts: Sequence[str], labels: Sequence[int] | None, fmt: Any) -> Any: ...

    def class_scores(self, prompt: Tensor, batch: Any) -> Tensor: ...

    def loss(self, prompt: Tensor, batch: Any) -> Tensor: ...


def shards_path(shards: str | Path | ArtifactRef) -> Path:
    """The shards folder of a path or a (verified) artifact reference."""
    if isinstance(shards, ArtifactRef):
        return Path(shards.verify().path)
    return Path(shards)


def shards_digest(root: Path) -> str:
    """sha256 of the shards' manifest ("" when there is none)."""
    from metapt_core.store import sha256_file

    manifest = root / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else ""


def pool_format(model: PromptObjective, pool: PoolFormat) -> Any:
    """The pool's template and label words in the model's own format object."""
    return model.task_format(pool.template, pool.verbalizer, "pool")


class EncodedTasks:
    """Every row of every task tokenised once per stage; episodes select rows from it.

    ``select`` of an encoded batch trims to its longest row, so a selection equals encoding
    those rows afresh (tested), without the tokenizer at every step.
    """

    def __init__(self, model: PromptObjective, tasks: Sequence[AuxTask], fmt: Any) -> None:
        self.batches = [
            model.encode(list(task.texts), [int(y) for y in task.labels], fmt) for task in tasks
        ]
        self.cluster_ids = [task.cluster_id for task in tasks]

    def rows(self, task_index: int, rows: np.ndarray) -> Any:
        """The encoded batch of ``rows`` (indices into task ``task_index``), in that order."""
        return self.batches[task_index].select([int(i) for i in rows])

    def episodes(self, episodes: Sequence[EpisodeRows]) -> list[Episode[Any]]:
        """Sampled row indices as encoded support/query batches."""
        return [
            Episode(
                support=self.rows(e.task_index, e.support),
                query=self.rows(e.task_index, e.query),
                task_id=self.cluster_ids[e.task_index],
            )
            for e in episodes
        ]


@dataclass
class PretrainData:
    """The clusters of one run and its fixed validation episodes.

    Attributes:
        tasks: the training clusters (their held-out rows kept out of training).
        held_out: the unseen clusters (never trained on).
        encoded: ``tasks`` encoded once.
        val: episodes from held-out rows of ``tasks``.
        unseen: episodes from ``held_out`` (empty when ``meta.val_clusters`` is 0).
    """

    tasks: list[AuxTask]
    held_out: list[AuxTask]
    encoded: EncodedTasks
    val: list[Episode[Any]]
    unseen: list[Episode[Any]]

    @property
    def held_out_ids(self) -> list[int]:
        return [t.cluster_id for t in self.held_out]


def load_pretrain_data(
    root: Path, meta: EpisodeSettings | MetaConfig, pool: PoolFormat, model: PromptObjective
) -> PretrainData:
    """Read the shards, hold out ``meta.val_clusters`` clusters, build the validation episodes.

    Seeds: the row split, the held-out clusters and both episode lists come from ``meta.seed``.
    """
    episode_rows = meta.support_size + meta.query_size
    every = load_aux_tasks(root, pool.classes, meta.val_fraction, episode_rows, meta.seed)
    tasks, held_out = hold_out_clusters(every, meta.val_clusters, meta.seed)
    fmt = pool_format(model, pool)
    encoded = EncodedTasks(model, tasks, fmt)
    sizes = (meta.support_size, meta.query_size, meta.seed, meta.balanced_episodes)
    val_rows = fixed_episodes(tasks, meta.val_episodes, *sizes, stream=VAL_STREAM, validation=True)
    unseen_rows = unseen_episodes(held_out, meta, sizes)
    unseen = EncodedTasks(model, held_out, fmt).episodes(unseen_rows) if held_out else []
    return PretrainData(tasks, held_out, encoded, encoded.episodes(val_rows), unseen)


def unseen_episodes(
    held_out: list[AuxTask], meta: EpisodeSettings | MetaConfig, sizes: tuple[int, int, int, bool]
) -> list[EpisodeRows]:
    """The held-out clusters' fixed validation episodes (``meta.val_episodes``), which choose
    alpha and the kept prompt; the check draws its own, disjoint from these."""
    return fixed_episodes(
        held_out, meta.val_episodes, *sizes, stream=UNSEEN_STREAM, validation=False
    )


def grouped_concat(model: PromptObjective, episodes: Sequence[Episode[Any]]) -> Any:
    """The batch type's ``concat`` when the model scores grouped prompts, else None."""
    if not episodes or not getattr(model, "accepts_grouped_prompts", False):
        return None
    return getattr(type(episodes[0].support), "concat", None)
