"""Episodes for meta-learning: disjoint, class-balanced support and query rows from a shard.

Every random choice comes from a numpy ``Generator`` seeded by ``(seed, purpose, step)``, so
the episodes of step ``t`` are the same in every process and after a resume, whatever ran
before.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metapt_core.errors import DataError

# Purposes of the random streams: distinct so training, validation and PPT draws never alias.
TRAIN_STREAM = 0
VAL_STREAM = 1
SPLIT_STREAM = 2
POOL_STREAM = 3
HOLDOUT_STREAM = 4
UNSEEN_STREAM = 5
CHECK_STREAM = 6


@dataclass(frozen=True)
class AuxTask:
    """One auxiliary task: a shard's texts and class ids, split into train and validation rows.

    Attributes:
        cluster_id: the shard's cluster.
        texts: every labelled row's text.
        labels: ``int64[N]`` class ids (indices into the manifest's classes).
        train_rows: ``int64[N_train]`` row indices used for training episodes.
        val_rows: ``int64[N_val]`` held-out row indices for validation episodes (may be empty).
    """

    cluster_id: int
    texts: tuple[str, ...]
    labels: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray


@dataclass(frozen=True)
class EpisodeRows:
    """Row indices (into an :class:`AuxTask`) of one episode's support and query batches."""

    task_index: int
    support: np.ndarray
    query: np.ndarray


def rng_for(seed: int, stream: int, step: int) -> np.random.Generator:
    """The generator of one purpose at one step: independent of anything drawn before."""
    return np.random.default_rng([int(seed), int(stream), int(step)])


def read_shards(
    shards_dir: str | Path,
) -> tuple[list[str], list[tuple[int, list[str], np.ndarray]]]:
    """Read a shards folder: ``(classes, [(cluster_id, texts, label_ids), ...])``.

    Uses :mod:`metapt_core.clustering.shards` when present, else reads ``manifest.json`` and the
    Parquet files directly (format in docs/ARCHITECTURE.md). Unlabelled rows (``label_id < 0``)
    are dropped: a loss needs a gold class.
    """
    import pandas as pd

    root = Path(shards_dir)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise DataError("shards", str(root), "has no manifest.json")
    manifest = json.loads(manifest_path.read_text("utf-8"))
    classes = [str(c) for c in manifest.get("classes", [])]
    shards = []
    for entry in manifest.get("shards", []):
        path = root / entry["file"]
        if not path.is_file():
            raise DataError("shards.file", str(path), "is listed in the manifest but missing")
        frame = pd.read_parquet(path, columns=["text", "label_id"])
        frame = frame[frame["label_id"] >= 0]
        shards.append(
            (
                int(entry["cluster_id"]),
                [str(t) for t in frame["text"].tolist()],
                frame["label_id"].to_numpy(dtype=np.int64),
            )
        )
    if not shards:
        raise DataError("shards", str(root), "lists no shards")
    return classes, shards


def split_validation(
    labels: np.ndarray, val_fraction: float, episode_rows: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``val_fraction`` of a shard's rows, stratified by class.

    A shard keeps no validation rows when taking at least ``episode_rows`` would leave fewer
    than ``episode_rows`` for training.

    Returns:
        ``(train_rows, val_rows)`` as sorted ``int64`` index arrays.
    """
    n = len(labels)
    n_val = max(math.ceil(val_fraction * n), episode_rows)
    if n - n_val < episode_rows:
        return np.arange(n, dtype=np.int64), np.empty(0, dtype=np.int64)
    # Stratified: each class gives its share of the n_val rows (largest remainders), drawn at
    # random from its rows, so both sides keep the shard's class proportions.
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * (n_val / n)
    take = np.floor(quota).astype(np.int64)
    by_remainder = np.argsort(-(quota - take), kind="stable")
    take[by_remainder[: n_val - int(take.sum())]] += 1
    picked = [
        rng.permutation(np.flatnonzero(labels == cls))[:k]
        for cls, k in zip(classes, take, strict=True)
    ]
    val = np.sort(np.concatenate(picked)).astype(np.int64)
    train = np.setdiff1d(np.arange(n, dtype=np.int64), val, assume_unique=True)
    return train, val


def load_aux_tasks(
    shards_dir: str | Path,
    classes: Sequence[str],
    val_fraction: float,
    episode_rows: int,
    seed: int,
) -> list[AuxTask]:
    """Every shard as an :class:`AuxTask` with its train/validation split.

    Args:
        shards_dir: the shards folder.
        classes: the class names the verbalizer expects, in label-id order.
        val_fraction: share of each shard held out for validation episodes.
        episode_rows: support + query size; shards with fewer training rows are refused.
        seed: seed of the split.
    """
    shard_classes, shards = read_shards(shards_dir)
    if shard_classes and list(shard_classes) != list(classes):
        raise DataError(
            "shards.classes", shard_classes, f"differ from pool.classes {list(classes)}"
        )
    tasks = []
    for cluster_id, texts, labels in shards:
        train, val = split_validation(
            labels, val_fraction, episode_rows, rng_for(seed, SPLIT_STREAM, cluster_id)
        )
        if len(train) < episode_rows:
            raise DataError(
                f"shards[{cluster_id}].rows",
                len(train),
                f"fewer labelled rows than support + query ({episode_rows})",
            )
        tasks.append(AuxTask(cluster_id, tuple(texts), labels, train, val))
    return tasks


def _interleave_by_class(
    labels: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """``rows`` reordered so classes alternate (random class order, random rows within class).

    Taking a prefix of the result gives a class-balanced sample as far as the classes allow.
    """
    classes = np.unique(labels[rows])
    queues = []
    for cls in rng.permutation(classes):
        members = rows[labels[rows] == cls]
        queues.append(list(rng.permutation(members)))
    out: list[int] = []
    depth = 0
    while len(out) < len(rows):
        for queue in queues:
            if depth < len(queue):
                out.append(int(queue[depth]))
        depth += 1
    return np.asarray(out, dtype=np.int64)


def sample_episode(
    labels: np.ndarray,
    rows: np.ndarray,
    support_size: int,
    query_size: int,
    rng: np.random.Generator,
    balanced: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint support and query rows, each class-balanced as far as the rows allow.

    The support takes a class-interleaved prefix of ``rows``; the query does the same over the
    rows left, so no row is in both. ``balanced=False``: the first ``support_size`` and the
    next ``query_size`` rows of a random permutation (each batch keeps the task's class prior).

    Returns:
        ``(support, query)``: ``int64`` arrays of ``support_size`` and ``query_size`` rows.
    """
    if len(rows) < support_size + query_size:
        raise DataError("episode.rows", len(rows), f"needs {support_size + query_size} rows")
    if not balanced:
        order = rng.permutation(rows)
        return order[:support_size], order[support_size : support_size + query_size]
    support = _interleave_by_class(labels, rows, rng)[:support_size]
    rest = np.setdiff1d(rows, support, assume_unique=True)
    query = _interleave_by_class(labels, rest, rng)[:query_size]
    return support, query


def sample_meta_batch(
    tasks: Sequence[AuxTask],
    meta_batch_size: int,
    support_size: int,
    query_size: int,
    rng: np.random.Generator,
    validation: bool = False,
    balanced: bool = True,
) -> list[EpisodeRows]:
    """A meta-batch: ``meta_batch_size`` tasks (distinct while there are enough) and their rows.

    Args:
        tasks: the auxiliary tasks.
        meta_batch_size: tasks per meta-batch.
        support_size / query_size: rows per batch.
        rng: the step's generator (see :func:`rng_for`).
        validation: draw from each task's held-out rows (tasks without enough are skipped).
        balanced: class-balanced batches (:func:`sample_episode`).
    """
    need = support_size + query_size
    usable = [
        i
        for i, task in enumerate(tasks)
        if len(task.val_rows if validation else task.train_rows) >= need
    ]
    if not usable:
        where = "validation" if validation else "training"
        raise DataError("shards", len(tasks), f"no shard has {need} {where} rows")
    replace = meta_batch_size > len(usable)
    chosen = rng.choice(np.asarray(usable), size=meta_batch_size, replace=replace)
    episodes = []
    for task_index in chosen:
        task = tasks[int(task_index)]
        rows = task.val_rows if validation else task.train_rows
        support, query = sample_episode(task.labels, rows, support_size, query_size, rng, balanced)
        episodes.append(EpisodeRows(int(task_index), support, query))
    return episodes


def fixed_episodes(
    tasks: Sequence[AuxTask],
    count: int,
    support_size: int,
    query_size: int,
    seed: int,
    balanced: bool = True,
    *,
    stream: int,
    validation: bool,
) -> list[EpisodeRows]:
    """A fixed set of ``count`` episodes, the same at every step and in every run of a seed:
    drawn with ``rng(seed, stream, 0)`` from the tasks' validation rows (``validation``) or their
    training rows (all rows of a held-out cluster). Empty when no task keeps
    ``support_size + query_size`` such rows.

    The pre-training's two validation sets: ``stream=VAL_STREAM, validation=True`` on the
    training clusters (their held-out rows), ``stream=UNSEEN_STREAM, validation=False`` on the
    held-out clusters (``task_index`` then indexes those).
    """
    need = support_size + query_size
    if count <= 0 or not any(
        len(t.val_rows if validation else t.train_rows) >= need for t in tasks
    ):
        return []
    rng = rng_for(seed, stream, 0)
    return sample_meta_batch(
        tasks, count, support_size, query_size, rng, validation=validation, balanced=balanced
    )


def hold_out_clusters(
    tasks: Sequence[AuxTask], count: int, seed: int
) -> tuple[list[AuxTask], list[AuxTask]]:
    """Split the tasks into those trained on and ``count`` whole clusters held out (unseen).

    The held-out clusters are drawn with ``rng(seed, HOLDOUT_STREAM, 0)``; so PPT and MetaPT of
    one seed hold out the same clusters. Every row of a held-out cluster is validation data.

    Returns:
        ``(train_tasks, held_out)``, each in cluster order.

    Raises:
        DataError: ``count`` leaves no cluster to train on.
    """
    if count <= 0:
        return list(tasks), []
    if count >= len(tasks):
        raise DataError(
            "meta.val_clusters", count, f"must leave a cluster to train on ({len(tasks)} clusters)"
        )
    picked = set(rng_for(seed, HOLDOUT_STREAM, 0).choice(len(tasks), size=count, replace=False))
    held = [
        dataclasses.replace(
            t, train_rows=np.arange(len(t.labels), dtype=np.int64), val_rows=np.empty(0, np.int64)
        )
        for i, t in enumerate(tasks)
        if i in picked
    ]
    return [t for i, t in enumerate(tasks) if i not in picked], held


def check_episodes(
    held_out: Sequence[AuxTask],
    used: Sequence[EpisodeRows],
    count: int,
    support_size: int,
    query_size: int,
    seed: int,
    balanced: bool = True,
) -> list[EpisodeRows]:
    """``count`` episodes from held-out clusters, disjoint in rows from the episodes ``used``
    (those that chose alpha and the kept prompt), for the meta-objective check.

    Drawn with ``rng(seed, CHECK_STREAM, 0)``; ``task_index`` indexes ``held_out``. Empty when
    no held-out cluster keeps ``support_size + query_size`` rows.
    """
    if count <= 0 or not held_out:
        return []
    taken: dict[int, set[int]] = {}
    for rows in used:
        taken.setdefault(rows.task_index, set()).update(rows.support.tolist())
        taken[rows.task_index].update(rows.query.tolist())
    free = [
        dataclasses.replace(
            t,
            train_rows=np.array(
                [r for r in t.train_rows.tolist() if r not in taken.get(i, set())], np.int64
            ),
        )
        for i, t in enumerate(held_out)
    ]
    if not any(len(t.train_rows) >= support_size + query_size for t in free):
        return []
    rng = rng_for(seed, CHECK_STREAM, 0)
    return sample_meta_batch(free, count, support_size, query_size, rng, balanced=balanced)
