"""The small-cluster rule: every task must give a support and a query batch for every class.

A cluster is *usable* when each class has at least ``min_per_class`` rows in it. Unusable
clusters are handled, smallest first, until all remaining clusters are usable:

- ``merge``: the cluster joins the other cluster whose centroid in embedding space is nearest
  (Euclidean; on normalised vectors the same order as cosine), usable or not; the merged
  centroid is recomputed and the check repeats (a merge that is still short merges again).
  Centroids are cached and only the merged cluster's is recomputed, so a merge costs O(N d),
  not O(k N d).
- ``drop``: the cluster's rows are removed from every task (label ``-1``).

Fewer than two usable clusters left is an error naming ``cluster.n_clusters``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from metapt_core.config import SmallClusterPolicy
from metapt_core.errors import DataError

log = logging.getLogger(__name__)

DROPPED = -1


@dataclass
class MergeReport:
    """What the small-cluster rule did: merges as (from, into, rows), drops as (cluster, rows)."""

    merged: list[tuple[int, int, int]] = field(default_factory=list)
    dropped: list[tuple[int, int]] = field(default_factory=list)

    @property
    def merged_rows(self) -> int:
        return sum(rows for _, _, rows in self.merged)

    @property
    def dropped_rows(self) -> int:
        return sum(rows for _, rows in self.dropped)


def class_counts(
    labels: np.ndarray, label_ids: np.ndarray, n_classes: int
) -> dict[int, np.ndarray]:
    """Rows per class in each cluster (``-1`` labels and unlabelled rows left out).

    One ``bincount`` over ``cluster_position * n_classes + class``: O(N) whatever the number
    of clusters.

    Returns:
        ``{cluster: int64 [n_classes]}``.
    """
    kept = labels != DROPPED
    clusters = np.unique(labels[kept])
    if len(clusters) == 0:
        return {}
    rows = kept & (label_ids >= 0) & (label_ids < n_classes)
    position = np.searchsorted(clusters, labels[rows])
    flat = np.bincount(position * n_classes + label_ids[rows], minlength=len(clusters) * n_classes)
    table = flat.reshape(len(clusters), n_classes).astype(np.int64)
    return {int(c): table[i] for i, c in enumerate(clusters)}


def enforce_min_rows(
    labels: np.ndarray,
    label_ids: np.ndarray,
    n_classes: int,
    min_per_class: int,
    vectors: np.ndarray,
    policy: SmallClusterPolicy,
) -> tuple[np.ndarray, MergeReport]:
    """Apply the small-cluster rule (module doc) and return the new labels.

    Args:
        labels: int ``[N]`` cluster ids, ``-1`` for rows already dropped (noise).
        label_ids: int ``[N]`` class index per row, ``-1`` when unlabelled.
        n_classes: number of classes.
        min_per_class: rows each class needs in a usable cluster.
        vectors: float32 ``[N, D]`` embeddings (for centroids).
        policy: merge or drop.

    Returns:
        (labels ``[N]`` with ``-1`` for rows dropped here or before, report).

    Raises:
        DataError: fewer than two usable clusters remain.
    """
    labels = np.asarray(labels, dtype=np.int64).copy()
    report = MergeReport()
    centroids: dict[int, np.ndarray] = {}

    def centroid(cluster: int) -> np.ndarray:
        """Mean embedding of ``cluster``'s rows, cached until the cluster changes."""
        if cluster not in centroids:
            centroids[cluster] = vectors[labels == cluster].mean(axis=0)
        return centroids[cluster]

    while True:
        counts = class_counts(labels, label_ids, n_classes)
        small = [c for c, n in counts.items() if int(n.min()) < min_per_class]
        if not small or len(counts) < 2:
            break
        # Smallest first: a small cluster merged into a larger one is the least disruptive move.
        victim = min(small, key=lambda c: (int((labels == c).sum()), c))
        rows = int((labels == victim).sum())
        if policy is SmallClusterPolicy.DROP:
            labels[labels == victim] = DROPPED
            report.dropped.append((victim, rows))
            log.info(
                "cluster: dropped cluster %d (%d rows, class counts %s)",
                victim,
                rows,
                counts[victim].tolist(),
            )
            continue
        # Nearest of all other clusters, usable or not: two neighbouring halves then become one
        # coherent task instead of both being swallowed by whichever usable cluster is nearest.
        targets = [c for c in counts if c != victim]
        centre = centroid(victim)
        dist = [float(((centroid(t) - centre) ** 2).sum()) for t in targets]
        into = targets[int(np.argmin(dist))]
        labels[labels == victim] = into
        # Only the merged cluster's centroid changed (recomputed over its rows when next needed).
        centroids.pop(victim, None)
        centroids.pop(into, None)
        report.merged.append((victim, into, rows))
        log.info(
            "cluster: merged cluster %d (%d rows, class counts %s) into %d",
            victim,
            rows,
            counts[victim].tolist(),
            into,
        )
    counts = class_counts(labels, label_ids, n_classes)
    usable_left = [c for c, n in counts.items() if int(n.min()) >= min_per_class]
    if len(usable_left) < 2:
        raise DataError(
            "cluster.n_clusters",
            len(counts) + len(report.merged) + len(report.dropped),
            f"only {len(usable_left)} cluster(s) have >= {min_per_class} rows of every class; "
            "use fewer clusters, a larger pool or a smaller cluster.min_rows_per_class",
        )
    return labels, report


def renumber(labels: np.ndarray) -> np.ndarray:
    """Map the surviving cluster ids to ``0..K-1`` in increasing order; ``-1`` stays ``-1``."""
    out = np.full_like(labels, DROPPED)
    for new, old in enumerate(np.unique(labels[labels != DROPPED])):
        out[labels == old] = new
    return out
