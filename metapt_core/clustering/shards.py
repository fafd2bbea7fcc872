"""Task shards: one Parquet file per auxiliary task and a JSON manifest describing them.

Folder layout: ``manifest.json`` and ``shard_<cluster:03d>.parquet`` (pool columns ``row_id``,
``text``, ``label``, ``label_id``, ``source`` plus ``cluster_id`` int32). The manifest::

    {"classes": [...], "method": "...", "n_rows": int,
     "dropped": {"noise": n, "small_clusters": n},
     "shards": [{"cluster_id": int, "file": "shard_000.parquet", "rows": int,
                 "label_counts": {"class": n}, "sha256": "...", "top_terms": ["..."]}]}

``n_rows`` counts the rows in the shards; the pool had ``n_rows + noise + small_clusters``
(``dropped`` counts rows, not clusters).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metapt_core.errors import DataError, IntegrityError
from metapt_core.store import sha256_file

MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"


@dataclass
class ShardEntry:
    """One auxiliary task: its file, size, class counts, fingerprint and distinctive terms."""

    cluster_id: int
    file: str
    rows: int
    label_counts: dict[str, int]
    sha256: str
    top_terms: list[str] = field(default_factory=list)


@dataclass
class ShardManifest:
    """The manifest of a shards folder (see the module doc)."""

    classes: list[str]
    method: str
    n_rows: int
    dropped: dict[str, int]
    shards: list[ShardEntry]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardManifest:
        return cls(
            classes=[str(c) for c in data["classes"]],
            method=str(data["method"]),
            n_rows=int(data["n_rows"]),
            dropped={str(k): int(v) for k, v in data["dropped"].items()},
            shards=[
                ShardEntry(
                    cluster_id=int(s["cluster_id"]),
                    file=str(s["file"]),
                    rows=int(s["rows"]),
                    label_counts={str(k): int(v) for k, v in s["label_counts"].items()},
                    sha256=str(s["sha256"]),
                    top_terms=[str(t) for t in s.get("top_terms", [])],
                )
                for s in data["shards"]
            ],
        )


def shard_name(cluster_id: int) -> str:
    """File name of a shard: ``shard_007.parquet``."""
    return f"shard_{cluster_id:03d}.parquet"


def write_shards(
    folder: Path,
    pool: pd.DataFrame,
    labels: np.ndarray,
    classes: list[str],
    method: str,
    dropped: dict[str, int],
    terms: dict[int, list[str]],
) -> ShardManifest:
    """Write one shard per cluster and the manifest into ``folder`` (created).

    Args:
        folder: the shards folder (inside the stage's atomic temporary folder).
        pool: the pool's rows, in the order of ``labels``.
        labels: int ``[N]`` final cluster ids ``0..K-1``; ``-1`` rows go in no shard.
        classes: class names (``label_counts`` keys, in this order).
        method: clustering method name.
        dropped: rows dropped as ``{"noise": n, "small_clusters": n}``.
        terms: top terms per cluster.

    Returns:
        The manifest written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    entries: list[ShardEntry] = []
    for cluster in np.unique(labels[labels >= 0]):
        cluster_id = int(cluster)
        rows = pool.loc[labels == cluster].copy()
        rows["cluster_id"] = np.int32(cluster_id)
        table = pa.Table.from_pandas(rows.reset_index(drop=True), preserve_index=False)
        table = table.set_column(
            table.schema.get_field_index("cluster_id"),
            "cluster_id",
            table.column("cluster_id").cast(pa.int32()),
        )
        name = shard_name(cluster_id)
        pq.write_table(table, folder / name)
        counts = rows["label"].value_counts() if "label" in rows else pd.Series(dtype=int)
        entries.append(
            ShardEntry(
                cluster_id=cluster_id,
                file=name,
                rows=len(rows),
                label_counts={c: int(counts.get(c, 0)) for c in classes},
                sha256=sha256_file(folder / name),
                top_terms=list(terms.get(cluster_id, [])),
            )
        )
    manifest = ShardManifest(
        classes=list(classes),
        method=method,
        n_rows=sum(e.rows for e in entries),
        dropped={
            "noise": int(dropped.get("noise", 0)),
            "small_clusters": int(dropped.get("small_clusters", 0)),
        },
        shards=entries,
    )
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", "utf-8")
    return manifest


def _shards_dir(path: str | Path) -> Path:
    """Accept the shards folder itself or the cluster stage's folder that holds ``shards/``."""
    folder = Path(path)
    if not (folder / MANIFEST_FILE).is_file() and (folder / SHARDS_DIR / MANIFEST_FILE).is_file():
        return folder / SHARDS_DIR
    return folder


def read_manifest(shards_dir: str | Path) -> ShardManifest:
    """Read ``manifest.json`` of a shards folder (or of the cluster stage folder above it).

    Raises:
        DataError: the manifest is missing or malformed.
    """
    folder = _shards_dir(shards_dir)
    path = folder / MANIFEST_FILE
    try:
        return ShardManifest.from_dict(json.loads(path.read_text("utf-8")))
    except FileNotFoundError:
        raise DataError("shards_ref", str(folder), "has no manifest.json") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            "shards_ref", str(path), f"is not a valid shard manifest ({exc!r})"
        ) from None


def load_shard(shards_dir: str | Path, entry: ShardEntry, verify: bool = True) -> pd.DataFrame:
    """Read one shard's rows, checking its fingerprint and size against the manifest.

    Raises:
        IntegrityError: the file's sha256 or row count differs from the manifest.
    """
    path = _shards_dir(shards_dir) / entry.file
    if verify:
        if not path.is_file():
            raise IntegrityError(f"shard {str(path)!r} is missing")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise IntegrityError(
                f"shard {str(path)!r} was altered: sha256 {actual[:12]} != manifest {entry.sha256[:12]}"
            )
    frame = pq.read_table(path).to_pandas()
    if len(frame) != entry.rows:
        raise IntegrityError(
            f"shard {str(path)!r} has {len(frame)} rows, manifest says {entry.rows}"
        )
    return frame
