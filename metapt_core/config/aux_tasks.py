"""The sections that split the pool into auxiliary tasks: its embedding and its clustering."""

from __future__ import annotations

from dataclasses import dataclass

from metapt_core.config.checks import _fraction, _non_negative, _positive
from metapt_core.config.enums import (
    ClusterMethod,
    HdbscanSelection,
    NoisePolicy,
    SmallClusterPolicy,
)
from metapt_core.errors import ConfigError


@dataclass
class EmbedConfig:
    """Sentence embedding of the pool (sentence-transformers)."""

    model: str = "builtin:all-MiniLM-L6-v2"  # or a hub name or a local path
    batch_size: int = 128
    max_seq_length: int = 128
    normalize: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        _positive("embed.batch_size", self.batch_size)
        _positive("embed.max_seq_length", self.max_seq_length)


@dataclass
class ClusterConfig:
    """Unsupervised clustering of the pool into auxiliary tasks."""

    method: ClusterMethod = ClusterMethod.KMEANS
    n_clusters: int = 8  # 0: choose automatically in [k_min, k_max] by silhouette
    k_min: int = 4
    k_max: int = 16
    minibatch_threshold: int = 20000  # MiniBatchKMeans above this many rows
    umap_components: int = 10
    umap_neighbors: int = 15
    hdbscan_min_cluster_size: int = 50
    hdbscan_selection: HdbscanSelection = HdbscanSelection.EOM
    noise_policy: NoisePolicy = NoisePolicy.NEAREST
    lda_vocab_size: int = 5000
    small_cluster_policy: SmallClusterPolicy = SmallClusterPolicy.MERGE
    min_rows_per_class: int = 0  # 0: derived from meta.support_size + meta.query_size
    top_terms: int = 10
    seed: int = 0
    dominant_share: float = 0.85  # label_prior: the dominant class's share of a task's rows
    auto_k_sample: int = 3000  # rows (seeded sample) fitted and scored per candidate k
    metrics_sample: int = 10000  # rows (seeded sample) for silhouette / Davies-Bouldin
    scatter_sample: int = 5000  # rows in the 2-D UMAP diagnostic plot; 0: no plot

    def __post_init__(self) -> None:
        _positive("cluster.auto_k_sample", self.auto_k_sample)
        _positive("cluster.metrics_sample", self.metrics_sample)
        _non_negative("cluster.scatter_sample", self.scatter_sample)
        if self.n_clusters != 0 and self.n_clusters < 2:
            raise ConfigError("cluster.n_clusters", self.n_clusters, "must be 0 (auto) or >= 2")
        if self.k_min < 2 or self.k_max < self.k_min:
            raise ConfigError("cluster.k_min", self.k_min, "needs 2 <= k_min <= k_max")
        _positive("cluster.umap_components", self.umap_components)
        _positive("cluster.umap_neighbors", self.umap_neighbors)
        _positive("cluster.hdbscan_min_cluster_size", self.hdbscan_min_cluster_size)
        _positive("cluster.lda_vocab_size", self.lda_vocab_size)
        _non_negative("cluster.min_rows_per_class", self.min_rows_per_class)
        if self.method is ClusterMethod.LABEL_PRIOR and self.n_clusters == 0:
            raise ConfigError("cluster.n_clusters", 0, "label_prior needs a number of tasks")
        _fraction("cluster.dominant_share", self.dominant_share)
