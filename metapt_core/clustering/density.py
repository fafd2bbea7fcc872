"""Density clustering: UMAP to a few dimensions, then HDBSCAN, with a stated noise policy.

HDBSCAN leaves points in no dense region as noise (label ``-1``). The policy decides their fate:

- ``drop``: they belong to no task (counted in the manifest's ``dropped.noise``).
- ``nearest``: each noise point joins the cluster whose centroid in the UMAP space is nearest
  (Euclidean), ``c(i) = argmin_c ||z_i - mean_{j in c} z_j||``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from metapt_core.config import NoisePolicy
from metapt_core.errors import DataError

log = logging.getLogger(__name__)

NOISE = -1


def umap_reduce(
    vectors: np.ndarray, n_components: int, n_neighbors: int, seed: int, min_dist: float = 0.0
) -> np.ndarray:
    """Reduce ``[N, D]`` vectors to ``[N, n_components]`` with UMAP (cosine metric, seeded).

    A fixed ``random_state`` makes UMAP single-threaded and deterministic.
    """
    import umap

    n_neighbors = max(2, min(n_neighbors, len(vectors) - 1))
    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="cosine",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state": the price of determinism.
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        reduced = reducer.fit_transform(vectors)
    return np.asarray(reduced, dtype=np.float32)


# Distances are computed for this many (row, centroid, coordinate) triples at a time.
_DISTANCE_BLOCK = 1 << 22  # 4M float32: 16 MB


def nearest_centroid(points: np.ndarray, labels: np.ndarray, space: np.ndarray) -> np.ndarray:
    """Label each of ``points`` with the cluster whose centroid in ``space`` is nearest.

    ``argmin_c ||space[i] - mu_c||^2`` with ``mu_c`` the mean of cluster c's rows, computed in
    blocks of rows so that memory stays at about 16 MB whatever ``M``, ``k`` and ``d`` are (the
    same arithmetic per row as one ``[M, k, d]`` array, so the same labels bit for bit).

    Args:
        points: indices ``[M]`` of the rows to assign.
        labels: current labels ``[N]`` (``-1`` rows do not form centroids).
        space: coordinates ``[N, d]``.

    Returns:
        int64 labels ``[M]``.
    """
    ids = np.unique(labels[labels != NOISE])
    centroids = np.stack([space[labels == c].mean(axis=0) for c in ids])
    k, d = centroids.shape
    block = max(1, _DISTANCE_BLOCK // max(1, k * d))
    out = np.empty(len(points), dtype=np.int64)
    for start in range(0, len(points), block):
        rows = space[points[start : start + block]]
        dist = ((rows[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
        out[start : start + block] = ids[dist.argmin(axis=1)]
    return out


def umap_hdbscan_labels(
    vectors: np.ndarray,
    n_components: int,
    n_neighbors: int,
    min_cluster_size: int,
    seed: int,
    noise_policy: NoisePolicy,
    selection: str = "eom",
) -> tuple[np.ndarray, int]:
    """Cluster with UMAP then HDBSCAN and apply the noise policy.

    Args:
        vectors: float32 ``[N, D]``.
        n_components: UMAP output dimension.
        n_neighbors: UMAP neighbourhood size.
        min_cluster_size: HDBSCAN's smallest cluster.
        seed: UMAP random state (HDBSCAN itself is deterministic).
        noise_policy: ``drop`` keeps noise as ``-1``; ``nearest`` assigns it (see module doc).
        selection: HDBSCAN's cluster selection, ``eom`` or ``leaf``.

    Returns:
        (labels ``[N]`` with ``-1`` for dropped noise, number of points HDBSCAN called noise).

    Raises:
        DataError: HDBSCAN found fewer than two clusters.
    """
    import hdbscan

    log.info("cluster: UMAP %d -> %d dims on %d rows", vectors.shape[1], n_components, len(vectors))
    reduced = umap_reduce(vectors, n_components, n_neighbors, seed)
    clusterer = hdbscan.HDBSCAN(
        min_cluster_size=min_cluster_size,
        cluster_selection_method=str(getattr(selection, "value", selection)),
    )
    labels = np.asarray(clusterer.fit_predict(reduced), dtype=np.int64)
    found = len(np.unique(labels[labels != NOISE]))
    if found < 2:
        raise DataError(
            "cluster.hdbscan_min_cluster_size",
            min_cluster_size,
            f"HDBSCAN found {found} cluster(s) in {len(vectors)} rows; lower it",
        )
    noise = labels == NOISE
    n_noise = int(noise.sum())
    if n_noise and noise_policy is NoisePolicy.NEAREST:
        labels[noise] = nearest_centroid(np.flatnonzero(noise), labels, reduced)
    log.info(
        "cluster: HDBSCAN found %d clusters, %d noise points (%.1f%%), policy %s",
        found,
        n_noise,
        100.0 * n_noise / len(labels),
        noise_policy.value,
    )
    return labels, n_noise
