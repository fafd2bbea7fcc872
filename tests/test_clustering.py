"""Clustering real tweet embeddings into task shards: each method, seeds, noise, drops, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _tweets import tweet_pool, write_pool

from metapt_core.clustering import cluster_labels, cluster_pool, load_shard, read_manifest
from metapt_core.config import EmbedConfig, PipelineConfig, load_config
from metapt_core.embedding import embed_pool
from metapt_core.errors import DataError, IntegrityError
from metapt_core.specs import ClusterSpec
from metapt_core.store import ArtifactRef, sha256_file

N_TWEETS = 400


@pytest.fixture(scope="module")
def real(embed_assets_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """400 real tweets written as a pool and embedded with the bundled MiniLM."""
    root = tmp_path_factory.mktemp("real-pool")
    pool = tweet_pool(embed_assets_dir, N_TWEETS, seed=0)
    pool_ref = ArtifactRef.of(write_pool(pool, root / "pool"))
    embed = embed_pool(
        pool_ref, EmbedConfig(batch_size=64, device="cpu"), embed_assets_dir, root / "embed"
    )
    vectors = np.load(root / "embed" / "embeddings.npy")
    return pool, pool_ref, embed.ref, vectors


def make_cfg(**cluster: object) -> PipelineConfig:
    overrides = [f"cluster.{key}={value}" for key, value in cluster.items()]
    return load_config("smoke", overrides=["cluster.scatter_sample=0", *overrides])


def shard_rows(shards_dir: Path) -> pd.DataFrame:
    manifest = read_manifest(shards_dir)
    return pd.concat(
        [load_shard(shards_dir, entry) for entry in manifest.shards], ignore_index=True
    )


def test_kmeans_shards_cover_the_pool_exactly_once(real, tmp_path) -> None:
    pool, pool_ref, embed_ref, _ = real
    cfg = make_cfg(method="kmeans", n_clusters=4, scatter_sample=300)
    seen: list[tuple[int, int]] = []
    result = cluster_pool(
        pool_ref,
        embed_ref,
        ClusterSpec.of(cfg),
        tmp_path / "out",
        lambda d, t, m: seen.append((d, t)),
    )
    rows = shard_rows(result.shards_dir)
    assert sorted(rows["row_id"]) == sorted(pool["row_id"])  # every row once, none twice
    assert rows["row_id"].is_unique
    manifest = read_manifest(result.shards_dir)
    assert manifest.n_rows == N_TWEETS and manifest.dropped == {"noise": 0, "small_clusters": 0}
    assert manifest.method == "kmeans" and manifest.classes == ["negative", "neutral", "positive"]
    for entry in manifest.shards:
        shard = load_shard(result.shards_dir, entry)
        assert (
            set(shard["cluster_id"]) == {entry.cluster_id}
            and str(shard["cluster_id"].dtype) == "int32"
        )
        assert entry.label_counts == {c: int((shard["label"] == c).sum()) for c in manifest.classes}
        assert min(entry.label_counts.values()) >= cfg.min_rows_per_class()
        assert entry.top_terms
    # Rows keep their pool columns and values.
    merged = rows.set_index("row_id").loc[pool["row_id"]]
    assert merged["text"].tolist() == pool["text"].tolist()
    assert merged["label"].tolist() == pool["label"].tolist()
    diag = result.diagnostics_dir
    for name in ("cluster_sizes.csv", "metrics.json", "top_terms.md", "umap_2d.png"):
        assert (diag / name).is_file(), name
    assert (diag / "umap_2d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = pd.read_csv(diag / "cluster_sizes.csv")
    assert sizes["rows"].sum() == N_TWEETS and list(sizes.columns[2:]) == manifest.classes
    metrics = json.loads((diag / "metrics.json").read_text())
    assert -1.0 <= metrics["silhouette"] <= 1.0 and metrics["davies_bouldin"] > 0
    assert result.stats["sizes"] == [e.rows for e in manifest.shards]
    assert result.stats["n_rows"] == N_TWEETS and result.stats["n_clusters"] == len(manifest.shards)
    assert result.ref.is_valid() and seen[-1][0] == seen[-1][1]


def test_manifest_fingerprints_match_the_files(real, tmp_path) -> None:
    _, pool_ref, embed_ref, _ = real
    result = cluster_pool(
        pool_ref,
        embed_ref,
        ClusterSpec.of(make_cfg(method="kmeans", n_clusters=3)),
        tmp_path / "out",
    )
    raw = json.loads((result.shards_dir / "manifest.json").read_text())
    assert set(raw) == {"classes", "method", "n_rows", "dropped", "shards"}
    for entry in raw["shards"]:
        assert sha256_file(result.shards_dir / entry["file"]) == entry["sha256"]
        assert set(entry) == {"cluster_id", "file", "rows", "label_counts", "sha256", "top_terms"}
    # The stage folder works as well as the shards folder.
    assert read_manifest(tmp_path / "out") == read_manifest(result.shards_dir)
    entry = read_manifest(result.shards_dir).shards[0]
    with open(result.shards_dir / entry.file, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(IntegrityError, match="altered"):
        load_shard(result.shards_dir, entry)


def test_same_seed_same_labels(real) -> None:
    pool, _, _, vectors = real
    texts = pool["text"].tolist()
    for method in ("kmeans", "lda"):
        cc = make_cfg(method=method, n_clusters=4, seed=3).cluster
        first, _ = cluster_labels(vectors, texts, cc)
        second, _ = cluster_labels(vectors, texts, cc)
        assert np.array_equal(first, second), method
        assert len(np.unique(first)) == 4, method


def test_auto_k_picks_the_best_silhouette_in_range(real, tmp_path) -> None:
    _, pool_ref, embed_ref, _ = real
    cfg = make_cfg(method="kmeans", n_clusters=0, k_min=2, k_max=4)
    stats = cluster_pool(pool_ref, embed_ref, ClusterSpec.of(cfg), tmp_path / "out").stats
    scores = {int(k): v for k, v in stats["k_scores"].items()}
    assert sorted(scores) == [2, 3, 4]
    assert stats["k"] == max(scores, key=lambda k: scores[k])


def test_umap_hdbscan_noise_policies(real, tmp_path) -> None:
    pool, pool_ref, embed_ref, vectors = real
    common = dict(
        method="umap_hdbscan",
        umap_components=5,
        umap_neighbors=15,
        hdbscan_min_cluster_size=10,
        hdbscan_selection="leaf",
        min_rows_per_class=1,
    )
    drop = cluster_pool(
        pool_ref,
        embed_ref,
        ClusterSpec.of(make_cfg(noise_policy="drop", **common)),
        tmp_path / "drop",
    )
    near = cluster_pool(
        pool_ref,
        embed_ref,
        ClusterSpec.of(make_cfg(noise_policy="nearest", **common)),
        tmp_path / "near",
    )
    # Same seed: UMAP and HDBSCAN find the same noise both times.
    assert drop.stats["noise"] == near.stats["noise"] > 0
    assert drop.stats["dropped_noise_rows"] == drop.stats["noise"]
    assert near.stats["dropped_noise_rows"] == 0
    drop_manifest, near_manifest = read_manifest(drop.shards_dir), read_manifest(near.shards_dir)
    assert drop_manifest.dropped["noise"] == drop.stats["noise"]
    assert (
        drop_manifest.n_rows + drop.stats["noise"] + drop_manifest.dropped["small_clusters"]
        == N_TWEETS
    )
    assert near_manifest.n_rows + near_manifest.dropped["small_clusters"] == N_TWEETS
    kept = set(shard_rows(drop.shards_dir)["row_id"])
    assert kept <= set(shard_rows(near.shards_dir)["row_id"]) <= set(pool["row_id"])


def test_lda_clusters_real_tweets(real, tmp_path) -> None:
    pool, pool_ref, embed_ref, _ = real
    result = cluster_pool(
        pool_ref,
        embed_ref,
        ClusterSpec.of(make_cfg(method="lda", n_clusters=3, lda_vocab_size=500)),
        tmp_path / "out",
    )
    rows = shard_rows(result.shards_dir)
    manifest = read_manifest(result.shards_dir)
    assert manifest.method == "lda" and len(manifest.shards) >= 2
    assert sorted(rows["row_id"]) == sorted(pool["row_id"])


@pytest.mark.parametrize("policy", ["merge", "drop"])
def test_small_clusters_are_merged_or_dropped_and_counted(real, tmp_path, policy) -> None:
    pool, pool_ref, embed_ref, _ = real
    # 8 clusters of 400 tweets with >= 9 rows of each class needed: five of them fall short.
    cfg = make_cfg(method="kmeans", n_clusters=8, min_rows_per_class=9, small_cluster_policy=policy)
    result = cluster_pool(pool_ref, embed_ref, ClusterSpec.of(cfg), tmp_path / "out")
    manifest = read_manifest(result.shards_dir)
    stats = result.stats
    assert stats["n_clusters"] < 8 and stats["n_clusters"] == len(manifest.shards)
    assert all(min(e.label_counts.values()) >= 9 for e in manifest.shards)
    assert [e.cluster_id for e in manifest.shards] == list(range(len(manifest.shards)))
    rows = shard_rows(result.shards_dir)
    assert rows["row_id"].is_unique
    if policy == "merge":
        assert stats["merged_clusters"] > 0 and stats["dropped_small_rows"] == 0
        assert sorted(rows["row_id"]) == sorted(pool["row_id"])
    else:
        assert stats["dropped_clusters"] > 0 and stats["merged_clusters"] == 0
        assert manifest.dropped["small_clusters"] == stats["dropped_small_rows"] > 0
        assert len(rows) + manifest.dropped["small_clusters"] == N_TWEETS
        assert set(rows["row_id"]) < set(pool["row_id"])


def test_too_few_usable_clusters_names_n_clusters(real, tmp_path) -> None:
    _, pool_ref, embed_ref, _ = real
    cfg = make_cfg(method="kmeans", n_clusters=4, min_rows_per_class=200)
    with pytest.raises(DataError, match="cluster.n_clusters"):
        cluster_pool(pool_ref, embed_ref, ClusterSpec.of(cfg), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_embeddings_of_another_pool_are_refused(real, tmp_path) -> None:
    pool, _, embed_ref, _ = real
    other = ArtifactRef.of(write_pool(pool.iloc[::-1].reset_index(drop=True), tmp_path / "pool"))
    with pytest.raises(DataError, match="row ids"):
        cluster_pool(other, embed_ref, ClusterSpec.of(make_cfg()), tmp_path / "out")
