"""c-TF-IDF top terms, the small-cluster rule and the nearest-centroid noise rule on hand-made data."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

from metapt_core.clustering.density import nearest_centroid
from metapt_core.clustering.merge import enforce_min_rows, renumber
from metapt_core.clustering.select import choose_k, seeded_sample
from metapt_core.clustering.terms import ctfidf, top_terms
from metapt_core.config import SmallClusterPolicy
from metapt_core.errors import DataError

# The implementations the blocked noise rule and the cached merge replaced: benchmark 4's
# baselines, and the reference these tests hold them to.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from bench_embed_cluster import one_array_nearest, recompute_all_merge  # noqa: E402


def test_ctfidf_matches_the_formula_by_hand() -> None:
    counts = np.array([[3, 0, 1], [1, 2, 1]])
    # A = mean words per cluster = (4 + 4) / 2 = 4; f = [4, 2, 2].
    expected = np.array(
        [
            [3 / 4 * math.log(1 + 4 / 4), 0.0, 1 / 4 * math.log(1 + 4 / 2)],
            [1 / 4 * math.log(1 + 4 / 4), 2 / 4 * math.log(1 + 4 / 2), 1 / 4 * math.log(1 + 4 / 2)],
        ]
    )
    np.testing.assert_allclose(ctfidf(counts), expected, rtol=1e-12)


def test_top_terms_on_a_tiny_corpus() -> None:
    texts = [
        "RT @pizzafan the pizza and pasta were great http://t.co/abc",
        "pizza with extra cheese",
        "cheese pizza again",
        "the football match ended in a draw",
        "football fans cheered the match",
        "a great football goal",
        "ignored row about pizza football",
    ]
    labels = np.array([0, 0, 0, 1, 1, 1, -1])
    terms = top_terms(texts, labels, top_n=2)
    assert set(terms) == {0, 1}  # the -1 row is left out
    assert terms[0] == ["pizza", "cheese"]
    assert terms[1] == ["football", "match"]
    # "great" is in both clusters, so it ranks below each cluster's own words.
    assert "great" not in terms[0] + terms[1]
    # Retweet markers, @mentions and URLs are not terms.
    everything = top_terms(texts, labels, top_n=50)[0]
    assert "pasta" in everything
    assert not {"rt", "pizzafan", "http", "co", "abc"} & set(everything)


def test_merge_moves_a_cluster_lacking_a_class_into_the_nearest_usable_one() -> None:
    # Clusters 0 and 1 have every class twice; cluster 2 has no class-2 row and sits near 0.
    labels = np.array([0] * 6 + [1] * 6 + [2] * 3)
    label_ids = np.array([0, 0, 1, 1, 2, 2] * 2 + [0, 1, 1])
    vectors = np.concatenate(
        [np.zeros((6, 2)), np.full((6, 2), 10.0), np.full((3, 2), 1.0)]
    ).astype(np.float32)
    merged, report = enforce_min_rows(labels, label_ids, 3, 2, vectors, SmallClusterPolicy.MERGE)
    assert merged[-3:].tolist() == [0, 0, 0]
    assert report.merged == [(2, 0, 3)] and report.dropped == []
    dropped, report = enforce_min_rows(labels, label_ids, 3, 2, vectors, SmallClusterPolicy.DROP)
    assert dropped[-3:].tolist() == [-1, -1, -1] and dropped[:12].tolist() == labels[:12].tolist()
    assert report.dropped == [(2, 3)] and report.dropped_rows == 3
    assert renumber(np.array([5, -1, 2, 5])).tolist() == [1, -1, 0, 1]


def test_merge_repeats_until_usable_and_refuses_a_single_task() -> None:
    # Clusters 0 and 1 each lack a class and are neighbours; 2 and 3 are usable.
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    label_ids = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1])
    vectors = np.array(
        [[0, 0], [0, 1], [1, 0], [1, 1], [3, 3], [3, 4], [4, 3], [4, 4]] + [[20, 20]] * 4,
        dtype=np.float32,
    )
    merged, report = enforce_min_rows(labels, label_ids, 2, 2, vectors, SmallClusterPolicy.MERGE)
    # Smallest first, ties by id: 0 joins its nearest cluster 1 (still short of nothing now:
    # 0 + 1 has two rows of each class), so nothing else moves.
    assert report.merged == [(0, 1, 2)]
    assert merged.tolist() == [1] * 4 + [2] * 4 + [3] * 4
    # Neighbouring halves pair up into two tasks instead of collapsing into one.
    pairs = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    pair_ids = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    merged, report = enforce_min_rows(pairs, pair_ids, 2, 2, vectors[:8], SmallClusterPolicy.MERGE)
    assert report.merged == [(0, 1, 2), (2, 3, 2)]
    assert merged.tolist() == [1, 1, 1, 1, 3, 3, 3, 3]
    with pytest.raises(DataError, match="cluster.n_clusters"):
        enforce_min_rows(labels, label_ids, 2, 3, vectors, SmallClusterPolicy.MERGE)
    with pytest.raises(DataError, match="cluster.n_clusters"):
        enforce_min_rows(labels[4:] - 1, label_ids[4:], 2, 4, vectors[4:], SmallClusterPolicy.DROP)


def test_noise_joins_the_nearest_centroid() -> None:
    space = np.array([[0, 0], [0, 2], [10, 10], [10, 12], [1, 1], [9, 9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, -1, -1])
    # Centroids (0, 1) and (10, 11): (1, 1) is nearer the first, (9, 9) the second.
    assert nearest_centroid(np.array([4, 5]), labels, space).tolist() == [0, 1]


def test_choose_k_takes_the_best_silhouette_and_sampling_is_seeded() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], dtype=np.float32)
    points = np.concatenate([c + rng.normal(0, 0.3, (30, 2)) for c in centres]).astype(np.float32)
    truth = np.repeat(np.arange(3), 30)

    def fit(k: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        return KMeans(k, random_state=0, n_init=4).fit_predict(points)

    best, scores = choose_k(points, 2, 5, fit)
    assert best == 3 and sorted(scores) == [2, 3, 4, 5]
    assert np.unique(fit(best)).size == 3 and len(truth) == 90
    assert seeded_sample(100, 10, 1).tolist() == seeded_sample(100, 10, 1).tolist()
    assert seeded_sample(5, 10, 1).tolist() == [0, 1, 2, 3, 4]


def test_blocked_noise_assignment_equals_the_whole_array(monkeypatch) -> None:
    from metapt_core.clustering import density

    rng = np.random.default_rng(3)
    space = rng.normal(size=(2000, 5)).astype(np.float32)
    labels = rng.integers(-1, 12, size=2000)
    noise = np.flatnonzero(labels == -1)
    reference = one_array_nearest(noise, labels, space)
    monkeypatch.setattr(density, "_DISTANCE_BLOCK", 7 * 12 * 5)  # 7 rows per block
    assert np.array_equal(nearest_centroid(noise, labels, space), reference)


def test_cached_centroid_merging_equals_recomputing_everything() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, 8)).astype(np.float32)
    labels = rng.integers(-1, 60, size=3000)
    label_ids = rng.integers(-1, 3, size=3000)
    merged, report = enforce_min_rows(labels, label_ids, 3, 9, vectors, SmallClusterPolicy.MERGE)
    assert len(report.merged) > 10  # the case exercises many merges
    assert np.array_equal(merged, recompute_all_merge(labels, label_ids, 3, 9, vectors))
