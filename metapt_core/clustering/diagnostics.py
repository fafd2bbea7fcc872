"""Files a person reads to judge a clustering: sizes, quality scores, top terms, a 2-D map.

Written into ``diagnostics/``: ``cluster_sizes.csv`` (rows and rows per class per cluster),
``metrics.json`` (silhouette and Davies-Bouldin on a seeded sample, plus the run's counts),
``top_terms.md`` (c-TF-IDF terms per cluster) and ``umap_2d.png`` (a seeded sample embedded in
2-D by UMAP, coloured by cluster).

Davies-Bouldin: ``DB = (1/K) sum_i max_{j != i} (s_i + s_j) / d(mu_i, mu_j)`` with ``s_i`` the
mean distance of cluster i's points to its centroid (lower is better).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import davies_bouldin_score, silhouette_score

from metapt_core.clustering.density import umap_reduce
from metapt_core.clustering.select import seeded_sample

log = logging.getLogger(__name__)

SIZES_FILE = "cluster_sizes.csv"
METRICS_FILE = "metrics.json"
TERMS_FILE = "top_terms.md"
SCATTER_FILE = "umap_2d.png"


def cluster_metrics(
    vectors: np.ndarray, labels: np.ndarray, seed: int, sample: int = 10000
) -> dict[str, float | None]:
    """Silhouette and Davies-Bouldin of the kept rows (``labels >= 0``) on a seeded sample.

    Returns:
        ``{"silhouette": float | None, "davies_bouldin": float | None}`` (None with < 2 clusters).
    """
    kept = np.flatnonzero(labels >= 0)
    idx = kept[seeded_sample(len(kept), sample, seed)]
    if len(np.unique(labels[idx])) < 2 or len(idx) < 3:
        return {"silhouette": None, "davies_bouldin": None}
    return {
        "silhouette": float(silhouette_score(vectors[idx], labels[idx])),
        "davies_bouldin": float(davies_bouldin_score(vectors[idx], labels[idx])),
    }


def sizes_table(labels: np.ndarray, label_ids: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """One row per kept cluster: ``cluster_id``, ``rows`` and one column of rows per class."""
    records = []
    for cluster in np.unique(labels[labels >= 0]):
        in_cluster = labels == cluster
        ids = label_ids[in_cluster & (label_ids >= 0)]
        per_class = np.bincount(ids, minlength=len(classes))[: len(classes)]
        records.append(
            {
                "cluster_id": int(cluster),
                "rows": int(in_cluster.sum()),
                **dict(zip(classes, per_class.tolist())),
            }
        )
    return pd.DataFrame.from_records(records, columns=["cluster_id", "rows", *classes])


def terms_markdown(sizes: pd.DataFrame, terms: dict[int, list[str]], method: str) -> str:
    """A Markdown table of clusters, their sizes and their top terms."""
    lines = [
        f"# Top terms per cluster ({method}, c-TF-IDF)",
        "",
        "| cluster | rows | top terms |",
        "|---|---|---|",
    ]
    for row in sizes.itertuples(index=False):
        cluster = int(row.cluster_id)
        lines.append(f"| {cluster} | {int(row.rows)} | {', '.join(terms.get(cluster, []))} |")
    return "\n".join(lines) + "\n"


def cluster_legend(
    sizes: pd.DataFrame, terms: dict[int, list[str]], n_terms: int = 3
) -> dict[int, str]:
    """Cluster id -> what the cluster is about: ``"3: bday, birthday, happy (n=925; negative 12%,
    neutral 30%, positive 58%)"``: its top c-TF-IDF terms and its class mix."""
    classes = [c for c in sizes.columns if c not in ("cluster_id", "rows")]
    legend = {}
    for row in sizes.to_dict("records"):
        cluster, rows = int(row["cluster_id"]), int(row["rows"])
        labelled = sum(int(row[c]) for c in classes)
        mix = ", ".join(f"{c} {100 * int(row[c]) / labelled:.0f}%" for c in classes if labelled > 0)
        words = ", ".join(terms.get(cluster, [])[:n_terms])
        legend[cluster] = f"{cluster}: {words} (n={rows}; {mix})" if words else (
            f"{cluster} (n={rows}; {mix})")  # fmt: skip
    return legend


def scatter_png(
    vectors: np.ndarray,
    labels: np.ndarray,
    path: Path,
    seed: int,
    sample: int = 5000,
    n_neighbors: int = 15,
    legend: dict[int, str] | None = None,
) -> None:
    """Save a 2-D UMAP scatter of a seeded sample of kept rows, coloured by cluster; the legend
    names each cluster by ``legend`` (its top terms and class mix), else by its id."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    kept = np.flatnonzero(labels >= 0)
    idx = kept[seeded_sample(len(kept), sample, seed)]
    xy = umap_reduce(vectors[idx], 2, n_neighbors, seed, min_dist=0.1)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    clusters = np.unique(labels[idx])
    cmap = plt.get_cmap("tab20" if len(clusters) > 10 else "tab10")
    for i, cluster in enumerate(clusters):
        mask = labels[idx] == cluster
        ax.scatter(
            xy[mask, 0],
            xy[mask, 1],
            s=4,
            alpha=0.6,
            color=cmap(i % cmap.N),
            label=(legend or {}).get(int(cluster), str(int(cluster))),
        )
    ax.set_title(f"UMAP 2-D of {len(idx)} rows by cluster")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        markerscale=3,
        fontsize=7,
        title="cluster: top terms (size; class mix)",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=2 if len(clusters) > 10 else 1,
    )
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None}, bbox_inches="tight")
    plt.close(fig)


def write_diagnostics(
    folder: Path,
    vectors: np.ndarray,
    labels: np.ndarray,
    label_ids: np.ndarray,
    classes: list[str],
    terms: dict[int, list[str]],
    method: str,
    seed: int,
    extra: dict[str, Any] | None = None,
    scatter_sample: int = 5000,
    metrics_sample: int = 10000,
) -> dict[str, Any]:
    """Write the four diagnostic files into ``folder`` (created) and return the metrics.

    Args:
        folder: output folder (inside the stage's atomic temporary folder).
        vectors: float32 ``[N, D]`` embeddings.
        labels: int ``[N]`` final cluster ids, ``-1`` for dropped rows.
        label_ids: int ``[N]`` class index per row.
        classes: class names.
        terms: top terms per cluster.
        method: clustering method name (for titles).
        seed: seed of the samples and of the 2-D UMAP.
        extra: more plain values for ``metrics.json`` (counts of the run).
        scatter_sample: rows in the scatter plot (0 skips the plot).
        metrics_sample: rows scored for silhouette / Davies-Bouldin.

    Returns:
        ``metrics.json``'s content.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes_table(labels, label_ids, classes)
    sizes.to_csv(folder / SIZES_FILE, index=False)
    metrics: dict[str, Any] = {
        **cluster_metrics(vectors, labels, seed, metrics_sample),
        **(extra or {}),
    }
    (folder / METRICS_FILE).write_text(
        json.dumps(metrics, indent=2, sort_keys=True) + "\n", "utf-8"
    )
    (folder / TERMS_FILE).write_text(terms_markdown(sizes, terms, method), "utf-8")
    if scatter_sample > 0:
        legend = cluster_legend(sizes, terms)
        scatter_png(vectors, labels, folder / SCATTER_FILE, seed, scatter_sample, legend=legend)
    log.info(
        "cluster: silhouette=%s davies_bouldin=%s",
        _fmt(metrics["silhouette"]),
        _fmt(metrics["davies_bouldin"]),
    )
    return metrics


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
