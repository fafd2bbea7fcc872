"""Episodes: disjoint, class-balanced, deterministic; validation rows held out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_meta_fixtures import CLASSES, write_shards

from metapt_core.errors import DataError
from metapt_core.pretraining.episodes import (
    TRAIN_STREAM,
    VAL_STREAM,
    fixed_episodes,
    load_aux_tasks,
    rng_for,
    sample_episode,
    sample_meta_batch,
)


def test_support_and_query_are_disjoint_and_balanced() -> None:
    labels = np.array([0] * 10 + [1] * 10 + [2] * 3)
    rows = np.arange(len(labels))
    for step in range(20):
        support, query = sample_episode(labels, rows, 6, 6, rng_for(0, TRAIN_STREAM, step))
        assert len(support) == 6 and len(query) == 6
        assert not set(support) & set(query)
        assert sorted(np.bincount(labels[support], minlength=3)) == [2, 2, 2]
        # Query: class 2 has one row left at most... balanced as far as the rows allow.
        counts = np.bincount(labels[query], minlength=3)
        assert counts.max() - counts[:2].min() <= 3


def test_unbalanced_episodes_keep_the_task_prior() -> None:
    """``balanced=False`` draws rows uniformly: a task 85% one class gives batches about 85%
    that class (the label-prior control's signal); balanced batches give about a third."""
    labels = np.array([0] * 170 + [1] * 15 + [2] * 15)
    rows = np.arange(len(labels))
    shares = {True: [], False: []}
    for balanced in (True, False):
        for step in range(200):
            rng = rng_for(0, TRAIN_STREAM, step)
            support, query = sample_episode(labels, rows, 8, 8, rng, balanced=balanced)
            assert len(support) == 8 and len(query) == 8
            assert not set(support) & set(query)
            shares[balanced].append(np.mean(labels[np.concatenate([support, query])] == 0))
    assert abs(np.mean(shares[False]) - 0.85) < 0.03
    assert abs(np.mean(shares[True]) - 1 / 3) < 0.03  # 3/3/2 per batch, the 2 rotating


def test_meta_batches_pass_the_balance_choice_on() -> None:
    """``sample_meta_batch`` (what training, validation, unseen and check episodes draw
    through) honours ``balanced``: the same skewed task gives ~85% or ~a third."""
    from metapt_core.pretraining.episodes import AuxTask

    labels = np.array([0] * 170 + [1] * 15 + [2] * 15)
    rows = np.arange(len(labels), dtype=np.int64)
    task = AuxTask(0, tuple(str(i) for i in rows), labels, rows, np.empty(0, np.int64))
    for balanced, expected in ((False, 0.85), (True, 1 / 3)):
        shares = []
        for step in range(100):
            (episode,) = sample_meta_batch(
                [task], 1, 8, 8, rng_for(0, TRAIN_STREAM, step), balanced=balanced
            )
            shares.append(np.mean(labels[np.concatenate([episode.support, episode.query])] == 0))
        assert abs(np.mean(shares) - expected) < 0.04, (balanced, np.mean(shares))


def test_validation_split_keeps_class_proportions() -> None:
    """Stratified: a shard 85% one class keeps 85% on both sides (to a row per class), where
    a class-balanced prefix would give the validation rows a third each."""
    from metapt_core.pretraining.episodes import split_validation

    labels = np.array([0] * 340 + [1] * 30 + [2] * 30)
    train, val = split_validation(labels, 0.1, 16, rng_for(0, TRAIN_STREAM, 0))
    assert len(val) == 40 and len(train) == 360
    assert not set(train) & set(val)
    assert np.bincount(labels[val], minlength=3).tolist() == [34, 3, 3]
    assert np.bincount(labels[train], minlength=3).tolist() == [306, 27, 27]


def test_episodes_deterministic_per_step(tmp_path: Path) -> None:
    tasks = load_aux_tasks(write_shards(tmp_path / "s"), CLASSES, 0.2, 6, seed=0)
    a = sample_meta_batch(tasks, 3, 3, 3, rng_for(0, TRAIN_STREAM, 5))
    b = sample_meta_batch(tasks, 3, 3, 3, rng_for(0, TRAIN_STREAM, 5))
    c = sample_meta_batch(tasks, 3, 3, 3, rng_for(0, TRAIN_STREAM, 6))
    assert [(e.task_index, e.support.tolist(), e.query.tolist()) for e in a] == [
        (e.task_index, e.support.tolist(), e.query.tolist()) for e in b
    ]
    assert [e.support.tolist() for e in a] != [e.support.tolist() for e in c]
    assert len({e.task_index for e in a}) == 3  # distinct tasks while there are enough


def test_validation_rows_are_held_out(tmp_path: Path) -> None:
    tasks = load_aux_tasks(write_shards(tmp_path / "s"), CLASSES, 0.2, 6, seed=0)
    for task in tasks:
        assert len(task.val_rows) == 6  # max(ceil(0.2 * 30), 6)
        assert not set(task.train_rows) & set(task.val_rows)
        assert len(task.train_rows) + len(task.val_rows) == len(task.labels)
    for episode in sample_meta_batch(tasks, 4, 3, 3, rng_for(0, TRAIN_STREAM, 1)):
        held = set(tasks[episode.task_index].val_rows)
        assert not held & (set(episode.support) | set(episode.query))
    for episode in fixed_episodes(tasks, 5, 3, 3, seed=0, stream=VAL_STREAM, validation=True):
        held = set(tasks[episode.task_index].val_rows)
        assert set(episode.support) | set(episode.query) <= held


def test_bad_shards_are_refused(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "s", rows_per_shard=5)
    with pytest.raises(DataError, match="support"):
        load_aux_tasks(root, CLASSES, 0.2, 6, seed=0)
    with pytest.raises(DataError, match="pool.classes"):
        load_aux_tasks(write_shards(tmp_path / "t"), ["a", "b"], 0.2, 6, seed=0)
    with pytest.raises(DataError, match="manifest"):
        load_aux_tasks(tmp_path / "missing", CLASSES, 0.2, 6, seed=0)
