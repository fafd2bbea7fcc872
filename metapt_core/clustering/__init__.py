"""Clustering the pre-training pool into auxiliary tasks (MetaPT's unsupervised split).

``cluster_pool`` reads the pool and its embeddings, clusters them (k-means, UMAP + HDBSCAN, or
LDA on bag-of-words; or, for the positive control, tasks made from the labels that each lean to
one class), applies the noise policy and the small-cluster rule, and writes
``shards/`` (one Parquet file per task plus ``manifest.json``) and ``diagnostics/``.

Usage::

    from metapt_core.clustering import cluster_pool, read_manifest, load_shard
    from metapt_core.specs import ClusterSpec
    result = cluster_pool(pool_ref, embed_ref, ClusterSpec.of(cfg), Path("out/cluster"))
    manifest = read_manifest(result.shards_dir)
    first = load_shard(result.shards_dir, manifest.shards[0])
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metapt_core.clustering.control import label_prior_tasks
from metapt_core.clustering.density import NOISE, umap_hdbscan_labels
from metapt_core.clustering.diagnostics import write_diagnostics
from metapt_core.clustering.kmeans import kmeans_labels
from metapt_core.clustering.merge import MergeReport, enforce_min_rows, renumber
from metapt_core.clustering.select import choose_k, seeded_sample
from metapt_core.clustering.shards import (
    SHARDS_DIR,
    ShardEntry,
    ShardManifest,
    load_shard,
    read_manifest,
    write_shards,
)
from metapt_core.clustering.terms import top_terms
from metapt_core.clustering.topics import lda_labels
from metapt_core.config import ClusterConfig, ClusterMethod
from metapt_core.embedding import read_embeddings, read_pool
from metapt_core.errors import ConfigError, DataError
from metapt_core.specs import ClusterSpec
from metapt_core.store import ArtifactRef, atomic_path

__all__ = [
    "ClusterResult",
    "MergeReport",
    "ShardEntry",
    "ShardManifest",
    "cluster_labels",
    "cluster_pool",
    "load_shard",
    "read_manifest",
]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
DIAGNOSTICS_DIR = "diagnostics"
_STEPS = 5


@dataclass
class ClusterResult:
    """The cluster stage's output: a reference to its shards folder and plain stats.

    ``ref`` fingerprints ``out_dir/shards`` (what the meta-learners and PPT read), so a change
    in the diagnostics alone does not invalidate them; ``diagnostics/`` sits next to it.
    """

    ref: ArtifactRef
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def shards_dir(self) -> Path:
        """The shards folder (``manifest.json`` and ``shard_*.parquet``)."""
        return Path(self.ref.path)

    @property
    def diagnostics_dir(self) -> Path:
        """The diagnostics folder (sizes CSV, metrics JSON, top terms, UMAP PNG)."""
        return Path(self.ref.path).parent / DIAGNOSTICS_DIR


def _label_ids(pool: Any, classes: list[str]) -> np.ndarray:
    """Class index of each row from its ``label`` (``-1`` when null or not a class)."""
    if "label" not in pool.columns:
        return np.full(len(pool), -1, dtype=np.int64)
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray(
        [index.get(v, -1) if isinstance(v, str) else -1 for v in pool["label"]], dtype=np.int64
    )


def cluster_labels(
    vectors: np.ndarray, texts: list[str], cc: ClusterConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Raw cluster labels of every row by ``cc.method``, before the small-cluster rule.

    Args:
        vectors: float32 ``[N, D]`` sentence embeddings.
        texts: the ``N`` texts (LDA clusters these).
        cc: clustering settings.

    Returns:
        (int64 labels ``[N]``, ``-1`` for noise dropped by the policy; info dict with ``k``,
        ``k_scores`` when k was chosen automatically, ``noise`` and ``empty_docs``).
    """
    n = len(vectors)
    info: dict[str, Any] = {"noise": 0, "empty_docs": 0, "k_scores": {}}
    if cc.method is ClusterMethod.UMAP_HDBSCAN:
        labels, info["noise"] = umap_hdbscan_labels(
            vectors,
            cc.umap_components,
            cc.umap_neighbors,
            cc.hdbscan_min_cluster_size,
            cc.seed,
            cc.noise_policy,
            cc.hdbscan_selection,
        )
        info["k"] = int(len(np.unique(labels[labels != NOISE])))
        return labels, info
    k = cc.n_clusters
    if k == 0:
        sample = seeded_sample(n, cc.auto_k_sample, cc.seed)
        if cc.method is ClusterMethod.KMEANS:

            def fit(kk: int) -> np.ndarray:
                return kmeans_labels(vectors[sample], kk, cc.seed, cc.minibatch_threshold)
        else:

            def fit(kk: int) -> np.ndarray:
                return lda_labels(
                    [texts[i] for i in sample], kk, cc.lda_vocab_size, cc.seed, vectors[sample]
                )[0]

        k, scores = choose_k(vectors[sample], cc.k_min, cc.k_max, fit)
        info["k_scores"] = scores
        log.info("cluster: auto-k chose k=%d from [%d, %d]", k, cc.k_min, cc.k_max)
    if k > n:
        raise ConfigError("cluster.n_clusters", k, f"exceeds the {n} rows of the pool")
    info["k"] = k
    if cc.method is ClusterMethod.KMEANS:
        return kmeans_labels(vectors, k, cc.seed, cc.minibatch_threshold), info
    labels, info["empty_docs"] = lda_labels(texts, k, cc.lda_vocab_size, cc.seed, vectors)
    return labels, info


def cluster_pool(
    pool_ref: ArtifactRef,
    embed_ref: ArtifactRef,
    spec: ClusterSpec,
    out_dir: str | Path,
    progress: Progress | None = None,
) -> ClusterResult:
    """Cluster the pool into auxiliary tasks and write shards and diagnostics.

    Args:
        pool_ref: the ingested pool (``pool.parquet`` or its folder).
        embed_ref: the embedding folder of the same pool (same rows, same order).
        spec: what clustering reads (:class:`~metapt_core.specs.ClusterSpec`: ``cluster``, the
            pool's classes, the rows a cluster needs per class).
        out_dir: the stage's folder, written atomically (``shards/`` and ``diagnostics/``).
        progress: called as ``progress(done, total, message)``.

    Returns:
        ``ClusterResult`` whose ``ref`` fingerprints ``out_dir/shards``; ``stats`` holds ``n_rows``,
        ``n_clusters``, ``noise``, dropped/merged counts, ``silhouette``, ``davies_bouldin``,
        ``sizes``.

    Raises:
        DataError: embeddings and pool disagree, the pool is unlabelled, or fewer than two
            usable clusters remain.
    """
    start = time.perf_counter()
    cc = spec.cluster
    classes = list(spec.classes)
    pool, vectors, label_ids = _read_inputs(pool_ref, embed_ref, classes)
    texts = pool["text"].astype(str).tolist()
    n = len(pool)

    def step(done: int, message: str) -> None:
        if progress:
            progress(done, _STEPS, message)

    step(0, f"clustering {n} rows with {cc.method.value}")
    labels, info = _raw_labels(vectors, texts, label_ids, len(classes), cc)
    found = int(len(np.unique(labels[labels != NOISE])))
    noise_dropped = int((labels == NOISE).sum())
    log.info("cluster: %s gave %d clusters over %d rows", cc.method.value, found, n)

    step(1, "applying the small-cluster rule")
    labels, report = _small_cluster_rule(
        labels, label_ids, len(classes), spec.min_rows_per_class, vectors, cc
    )

    step(2, "finding top terms")
    terms = top_terms(texts, labels, cc.top_terms)
    counts = _counts(labels, n, found, noise_dropped, info, report, cc)

    out = Path(out_dir)
    dropped = {"noise": noise_dropped, "small_clusters": report.dropped_rows}
    manifest, metrics = _write_stage(
        out, step, pool, vectors, labels, label_ids, classes, terms, dropped, counts, cc
    )
    step(_STEPS, "done")
    stats = {
        **counts,
        "silhouette": metrics["silhouette"],
        "davies_bouldin": metrics["davies_bouldin"],
    }
    stats["seconds"] = round(time.perf_counter() - start, 2)
    log.info(
        "cluster: %d shards, %d of %d rows kept (noise dropped %d, small clusters dropped %d) in %.1f s",
        len(manifest.shards),
        manifest.n_rows,
        n,
        noise_dropped,
        report.dropped_rows,
        stats["seconds"],
    )
    return ClusterResult(ref=ArtifactRef.of(out / SHARDS_DIR), stats=stats)


def _read_inputs(
    pool_ref: ArtifactRef, embed_ref: ArtifactRef, classes: list[str]
) -> tuple[Any, np.ndarray, np.ndarray]:
    """The pool, its embeddings ``[N, D]`` and each row's class index ``[N]``, checked to
    agree row for row and to hold labelled rows."""
    pool = read_pool(pool_ref)
    vectors, row_ids = read_embeddings(embed_ref)
    if row_ids != pool["row_id"].astype(str).tolist():
        raise DataError(
            "embed_ref", embed_ref.path, "row ids differ from pool.parquet's (re-run embed)"
        )
    label_ids = _label_ids(pool, classes)
    if not (label_ids >= 0).any():
        raise DataError(
            "pool.classes", classes, "no pool row has one of these labels; tasks need labels"
        )
    return pool, vectors, label_ids


def _raw_labels(
    vectors: np.ndarray, texts: list[str], label_ids: np.ndarray, n_classes: int, cc: ClusterConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`cluster_labels`, or for the positive control the label-prior tasks (each leaning
    to one class) with the same info dict."""
    if cc.method is ClusterMethod.LABEL_PRIOR:
        labels = label_prior_tasks(label_ids, n_classes, cc.n_clusters, cc.dominant_share, cc.seed)
        info: dict[str, Any] = {"k": cc.n_clusters, "noise": 0, "empty_docs": 0, "k_scores": {}}
        return labels, info
    return cluster_labels(vectors, texts, cc)


def _small_cluster_rule(
    labels: np.ndarray,
    label_ids: np.ndarray,
    n_classes: int,
    min_rows: int,
    vectors: np.ndarray,
    cc: ClusterConfig,
) -> tuple[np.ndarray, MergeReport]:
    """Merge or drop clusters with fewer than ``min_rows`` rows of a class
    (``cc.small_cluster_policy``), then renumber the rest ``0..K-1``."""
    labels, report = enforce_min_rows(
        labels, label_ids, n_classes, min_rows, vectors, cc.small_cluster_policy
    )
    labels = renumber(labels)
    log.info(
        "cluster: small-cluster rule (%s, >= %d rows per class): %d merged (%d rows), %d dropped (%d rows)",
        cc.small_cluster_policy.value,
        min_rows,
        len(report.merged),
        report.merged_rows,
        len(report.dropped),
        report.dropped_rows,
    )
    return labels, report


def _counts(
    labels: np.ndarray,
    n: int,
    found: int,
    noise_dropped: int,
    info: dict[str, Any],
    report: MergeReport,
    cc: ClusterConfig,
) -> dict[str, Any]:
    """The stage's plain counts (rows, clusters found and kept, noise, merges, drops, sizes),
    from the final labels ``[N]`` and what each step reported."""
    sizes = [int((labels == c).sum()) for c in range(int(labels.max()) + 1)]
    return {
        "n_rows": n,
        "n_clusters": len(sizes),
        "n_clusters_found": found,
        "k": info["k"],
        "noise": int(info["noise"]),
        "noise_policy": cc.noise_policy.value if cc.method is ClusterMethod.UMAP_HDBSCAN else None,
        "dropped_noise_rows": noise_dropped,
        "merged_clusters": len(report.merged),
        "merged_rows": report.merged_rows,
        "dropped_clusters": len(report.dropped),
        "dropped_small_rows": report.dropped_rows,
        "empty_docs": int(info["empty_docs"]),
        "k_scores": {str(k): round(v, 5) for k, v in info["k_scores"].items()},
        "sizes": sizes,
    }


def _write_stage(
    out: Path,
    step: Callable[[int, str], None],
    pool: Any,
    vectors: np.ndarray,
    labels: np.ndarray,
    label_ids: np.ndarray,
    classes: list[str],
    terms: dict[int, list[str]],
    dropped: dict[str, int],
    counts: dict[str, Any],
    cc: ClusterConfig,
) -> tuple[ShardManifest, dict[str, Any]]:
    """Write ``out/shards`` and ``out/diagnostics`` in one atomic rename; returns the manifest
    and the diagnostics' metrics."""
    with atomic_path(out) as tmp:
        step(3, "writing shards")
        manifest = write_shards(
            tmp / SHARDS_DIR, pool, labels, classes, cc.method.value, dropped, terms
        )
        step(4, "writing diagnostics")
        metrics = write_diagnostics(
            tmp / DIAGNOSTICS_DIR,
            vectors,
            labels,
            label_ids,
            classes,
            terms,
            cc.method.value,
            cc.seed,
            extra=counts,
            scatter_sample=cc.scatter_sample,
            metrics_sample=cc.metrics_sample,
        )
    return manifest, metrics
