"""k-means over sentence embeddings: exact KMeans, or MiniBatchKMeans on large pools.

Minimises the within-cluster sum of squares ``sum_i ||x_i - mu_{c(i)}||^2``; on L2-normalised
embeddings this is equivalent to maximising cosine similarity to the centroids.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans


def kmeans_labels(
    vectors: np.ndarray, n_clusters: int, seed: int, minibatch_threshold: int = 20000
) -> np.ndarray:
    """Cluster rows of ``vectors`` into ``n_clusters`` groups, reproducibly for a seed.

    Args:
        vectors: float32 ``[N, D]``.
        n_clusters: k.
        seed: random state of the initialisation (and of the mini-batches).
        minibatch_threshold: above this many rows MiniBatchKMeans is used instead of KMeans.

    Returns:
        int64 labels ``[N]`` in ``0..k-1``.
    """
    if len(vectors) > minibatch_threshold:
        model: KMeans | MiniBatchKMeans = MiniBatchKMeans(
            n_clusters=n_clusters, random_state=seed, n_init=3, batch_size=4096
        )
    else:
        model = KMeans(n_clusters=n_clusters, random_state=seed, n_init=4)
    return np.asarray(model.fit_predict(vectors), dtype=np.int64)
