"""Choosing the number of clusters automatically: the k with the best silhouette in a range.

Silhouette of point i: ``s_i = (b_i - a_i) / max(a_i, b_i)`` with ``a_i`` the mean distance to
its own cluster and ``b_i`` the mean distance to the nearest other cluster; the score is the
mean of ``s_i`` (higher is better, in [-1, 1]).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from sklearn.metrics import silhouette_score

log = logging.getLogger(__name__)


def seeded_sample(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded sample of ``min(n, size)`` rows out of ``n``."""
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False))


def choose_k(
    vectors: np.ndarray,
    k_min: int,
    k_max: int,
    labels_for_k: Callable[[int], np.ndarray],
) -> tuple[int, dict[int, float]]:
    """Try every k in ``[k_min, k_max]`` and keep the one whose labels score best.

    Args:
        vectors: float32 ``[M, D]`` the silhouette is measured in (usually a seeded sample).
        k_min: smallest k tried.
        k_max: largest k tried (capped at ``M - 1``).
        labels_for_k: ``labels_for_k(k) -> [M]`` labels of the same rows for k clusters.

    Returns:
        (best k, silhouette per k tried). Ties go to the smaller k.
    """
    scores: dict[int, float] = {}
    for k in range(k_min, min(k_max, len(vectors) - 1) + 1):
        labels = labels_for_k(k)
        if len(np.unique(labels)) < 2:
            continue
        scores[k] = float(silhouette_score(vectors, labels))
        log.info("cluster: auto-k k=%d silhouette=%.4f", k, scores[k])
    if not scores:
        return k_min, scores
    best = max(scores, key=lambda k: (scores[k], -k))
    return best, scores
