"""Shared helpers for the meta-learning tests: a synthetic shards folder and a small config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from metapt_core.config import PipelineConfig, SourceConfig, TargetTaskConfig, from_dict, to_dict

CLASSES = ["negative", "neutral", "positive"]
WORDS = {
    0: ["bad", "terrible", "awful", "boring", "poor"],
    1: ["maybe", "fine", "okay", "average", "plain"],
    2: ["good", "great", "lovely", "superb", "fun"],
}
TOPICS = ["movie plot actors", "phone screen battery", "food service table", "game team score"]


def write_shards(root: Path, rows_per_shard: int = 30, n_shards: int = 4, seed: int = 0) -> Path:
    """A shards folder in the documented format: one topic per shard, three sentiment classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for cid in range(n_shards):
        labels = rng.integers(0, 3, size=rows_per_shard)
        texts = [
            f"the {TOPICS[cid % len(TOPICS)].split()[rng.integers(0, 3)]} was "
            f"{rng.choice(WORDS[int(y)])} {rng.choice(WORDS[int(y)])} row {cid}-{i}"
            for i, y in enumerate(labels)
        ]
        frame = pd.DataFrame(
            {
                "row_id": [f"syn:{cid}:{i}" for i in range(rows_per_shard)],
                "text": texts,
                "label": [CLASSES[int(y)] for y in labels],
                "label_id": labels.astype("int32"),
                "source": "synthetic",
                "cluster_id": np.full(rows_per_shard, cid, dtype="int32"),
            }
        )
        name = f"shard_{cid:03d}.parquet"
        frame.to_parquet(root / name, index=False)
        counts = {CLASSES[k]: int((labels == k).sum()) for k in range(3)}
        entries.append(
            {
                "cluster_id": cid,
                "file": name,
                "rows": rows_per_shard,
                "label_counts": counts,
                "sha256": "",
                "top_terms": [],
            }
        )
    manifest = {
        "classes": CLASSES,
        "method": "synthetic",
        "n_rows": rows_per_shard * n_shards,
        "dropped": {"noise": 0, "small_clusters": 0},
        "shards": entries,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def small_config(**meta: object) -> PipelineConfig:
    """A config with a tiny meta section (overridable) and the pool's 3-class verbalizer."""
    base = to_dict(
        PipelineConfig(tasks=[TargetTaskConfig(name="t", train=SourceConfig(name="t", path="x"))])
    )
    base["meta"].update(
        {
            "meta_steps": 6,
            "meta_batch_size": 4,
            "support_size": 3,
            "query_size": 3,
            "inner_steps": 1,
            "inner_lr": 0.5,
            "outer_lr": 0.05,
            "val_every": 2,
            "val_episodes": 4,
            "val_fraction": 0.2,
            "checkpoint_every": 2,
            "seed": 0,
        }
    )
    base["meta"].update(meta)
    base["prompt"]["length"] = 3
    return from_dict(PipelineConfig, base)
