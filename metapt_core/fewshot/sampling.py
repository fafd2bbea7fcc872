"""Stratified few-shot splits: k training rows (and optionally a dev set) per class.

A split depends only on the task's rows, ``shots``, ``dev_per_class`` and ``split_seed`` --
never on the initialisation -- so every initialisation of a grid cell group sees the same rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from metapt_core.errors import DataError


@dataclass(frozen=True)
class FewShotSplit:
    """The rows a few-shot cell trains on and selects with.

    Attributes:
        train_rows: ``shots`` rows per class (rows columns: row_id, text, label, label_id, ...).
        dev_rows: ``dev_per_class`` rows per class, disjoint from ``train_rows``; None without a
            dev set.
    """

    train_rows: pd.DataFrame
    dev_rows: pd.DataFrame | None

    @property
    def split_id(self) -> str:
        """A short fingerprint of the sorted train and dev row ids (equal splits, equal id)."""
        digest = hashlib.sha256()
        for part in (self.train_rows, self.dev_rows):
            ids = [] if part is None else sorted(part["row_id"].astype(str))
            digest.update("\n".join(ids).encode())
            digest.update(b"\0")
        return digest.hexdigest()[:16]


def sample_split(
    train_df: pd.DataFrame,
    classes: list[str],
    shots: int,
    split_seed: int,
    dev_per_class: int = 0,
) -> FewShotSplit:
    """Sample ``shots`` training rows and ``dev_per_class`` dev rows of every class.

    Rows of each class are sorted by ``row_id`` (so the split does not depend on file order) and
    permuted by a generator seeded with ``split_seed``; training rows are the head of the
    permutation and dev rows its tail, so splits for a smaller ``shots`` are nested in those of a
    larger one and the dev set does not change with ``shots``.

    Args:
        train_df: the task's train split (columns ``row_id``, ``label_id``, ...).
        classes: the task's class names; ``label_id`` indexes this list.
        shots: rows per class to train on (k).
        split_seed: seed of the split, separate from the training seed.
        dev_per_class: rows per class for dev-set model selection; 0 for none.

    Returns:
        The split; rows keep all input columns and come in class order.

    Raises:
        DataError: naming ``fewshot.shots`` (or ``fewshot.dev_per_class``) when a class has too
            few rows.
    """
    for column in ("row_id", "label_id"):
        if column not in train_df.columns:
            raise DataError("train.parquet", column, "column is missing")
    rng = np.random.default_rng(split_seed)
    train_parts: list[pd.DataFrame] = []
    dev_parts: list[pd.DataFrame] = []
    for class_id, name in enumerate(classes):
        rows = train_df[train_df["label_id"] == class_id].sort_values("row_id", kind="stable")
        n = len(rows)
        if n < shots:
            raise DataError("fewshot.shots", shots, f"class {name!r} has only {n} training rows")
        if n < shots + dev_per_class:
            raise DataError(
                "fewshot.dev_per_class",
                dev_per_class,
                f"class {name!r} has {n} rows, fewer than shots {shots} + dev {dev_per_class}",
            )
        order = rng.permutation(n)
        train_parts.append(rows.iloc[order[:shots]])
        if dev_per_class:
            dev_parts.append(rows.iloc[order[n - dev_per_class :]])
    train_rows = pd.concat(train_parts, ignore_index=True)
    dev_rows = pd.concat(dev_parts, ignore_index=True) if dev_per_class else None
    return FewShotSplit(train_rows=train_rows, dev_rows=dev_rows)
