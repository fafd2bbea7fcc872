"""Small stand-ins for the core stage functions: for the orchestration unit tests only.

Not a test module (pytest does not collect it) and never used by the pipeline itself: the
end-to-end, resume, concurrency and cache-integrity tests run the real core. The orchestration
unit tests (cache keys, recomputation of dependents, retries) call :func:`install`, which
monkeypatches, in-process, each core function that the task modules import by name with the
stand-in of the same name. Each call appends its stage name to
``$METAPT_FAKE_LOG`` (so tests see what was recomputed) and sleeps ``$METAPT_FAKE_SECONDS``.
``$METAPT_FAKE_FAIL`` names a cell group (``task/kN/sN``) that always fails. Outputs are
deterministic functions of their inputs and settings.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from metapt_core.config import to_dict
from metapt_core.fewshot.stage import GroupResult
from metapt_core.specs import (
    ClusterSpec,
    EvalSpec,
    MetaSpec,
    PoolSpec,
    PPTSpec,
    ReportSpec,
    TasksSpec,
)
from metapt_core.store import ArtifactRef, atomic_write_json, atomic_write_text, seal

Progress = Any

# The Prefect task modules whose module-level imports of core functions the stand-ins replace.
TASK_MODULES = (
    "tasks.assets",
    "tasks.common",
    "tasks.ingest",
    "tasks.embed",
    "tasks.cluster",
    "tasks.pretrain",
    "tasks.objective",
    "tasks.evaluate",
)


STANDINS = (
    "prepare_assets",
    "ingest_pool",
    "ingest_tasks",
    "embed_pool",
    "cluster_pool",
    "load_prompt_model",
    "meta_pretrain",
    "ppt_pretrain",
    "meta_objective_check",
    "evaluate_group",
    "build_report",
)


def install(monkeypatch: Any) -> None:
    """Use the stand-ins in this process (undone with ``monkeypatch``): every task module's
    imported core function of one of these names is replaced by its stand-in."""
    this = sys.modules[__name__]
    replaced = set()
    for name in TASK_MODULES:
        module = importlib.import_module(name)
        for attr in STANDINS:
            if callable(getattr(module, attr, None)):
                monkeypatch.setattr(module, attr, getattr(this, attr))
                replaced.add(attr)
    missing = set(STANDINS) - replaced
    assert not missing, f"no task module calls {sorted(missing)}: the stand-ins are stale"


@dataclass
class FakeResult:
    ref: ArtifactRef
    stats: dict[str, Any] = field(default_factory=dict)


def _called(stage: str, progress: Progress = None) -> None:
    log = os.environ.get("METAPT_FAKE_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(stage + "\n")
    delay = float(os.environ.get("METAPT_FAKE_SECONDS", "0"))
    steps = 4
    for step in range(steps):
        time.sleep(delay / steps)
        if progress:
            progress(step + 1, steps, f"{stage} step {step + 1}")


def _number(*parts: Any) -> float:
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF


def prepare_assets(assets_dir: Any, names: Any = None, progress: Progress = None) -> Path:
    root = Path(assets_dir)
    atomic_write_json(root / "fake" / "manifest.json", {"name": "fake", "sha256": "0" * 64})
    return root


def ingest_pool(cfg: PoolSpec, assets: Any, out_dir: Path, progress: Progress = None) -> FakeResult:
    _called("ingest-pool", progress)
    rows = min(cfg.pool.max_rows or 60, 60)
    frame = pd.DataFrame(
        {
            "row_id": [f"pool-{i}" for i in range(rows)],
            "text": [f"text {i} seed {cfg.pool.seed}" for i in range(rows)],
            "label": [cfg.pool.classes[i % len(cfg.pool.classes)] for i in range(rows)],
        }
    )
    frame.to_parquet(out_dir / "pool.parquet")
    return FakeResult(
        ArtifactRef.of(out_dir / "pool.parquet"), {"rows": rows, "dropped": {"empty": 0}}
    )


def ingest_tasks(
    cfg: TasksSpec, assets: Any, pool_ref: ArtifactRef, out_dir: Path, progress: Progress = None
) -> FakeResult:
    _called("ingest-tasks", progress)
    for spec in cfg.tasks:
        folder = out_dir / "tasks" / spec.name
        folder.mkdir(parents=True)
        for split in ("train", "test"):
            # the content follows the task settings, as the real ingestion's does
            text = f"{_number(to_dict(spec), split):.6f}"
            pd.DataFrame({"text": [text, "b"], "label": spec.classes[:2]}).to_parquet(
                folder / f"{split}.parquet"
            )
    return FakeResult(seal(out_dir / "tasks"), {"tasks": len(cfg.tasks)})


def embed_pool(
    pool_ref: ArtifactRef, cfg: Any, assets_dir: Any, out_dir: Path, progress: Progress = None
) -> FakeResult:
    _called("embed", progress)
    rows = len(pd.read_parquet(pool_ref.path))
    seed = int(_number(to_dict(cfg)) * 1e6)
    vectors = np.random.default_rng(seed).normal(size=(rows, 8)).astype(np.float32)
    np.save(out_dir / "embeddings.npy", vectors)
    return FakeResult(seal(out_dir), {"rows": rows, "dim": 8})


def cluster_pool(
    pool_ref: ArtifactRef,
    embed_ref: ArtifactRef,
    spec: ClusterSpec,
    out_dir: Path,
    progress: Progress = None,
) -> FakeResult:
    _called("cluster", progress)
    k = spec.cluster.n_clusters or 3
    pool = pd.read_parquet(pool_ref.path)
    shards = out_dir / "shards"
    shards.mkdir()
    entries = []
    for cluster in range(k):
        part = pool.iloc[cluster::k]
        part.to_parquet(shards / f"shard_{cluster:03d}.parquet")
        entries.append({"cluster_id": cluster, "rows": len(part), "top_terms": ["text"]})
    manifest = {"method": "fake", "shards": entries, "embeddings": embed_ref.sha256}
    atomic_write_json(shards / "manifest.json", manifest)
    (out_dir / "diagnostics").mkdir()
    atomic_write_json(
        out_dir / "diagnostics" / "top_terms.json", {str(c): ["text"] for c in range(k)}
    )
    return FakeResult(seal(out_dir), {"clusters": k, "silhouette": 0.1 * k})


def load_prompt_model(cfg: Any) -> str:
    return "fake-backbone"


def _prompt(
    out_dir: Path, made_by: str, shards_ref: ArtifactRef, cfg: MetaSpec | PPTSpec, section: Any
) -> None:
    value = _number(made_by, shards_ref.sha256, to_dict(section))
    vector = np.full((cfg.prompt.length, 4), value, dtype=np.float32)
    np.save(out_dir / "prompt.npy", vector)
    atomic_write_json(out_dir / "prompt.json", {"made_by": made_by, "length": cfg.prompt.length})


def meta_pretrain(
    shards_ref: ArtifactRef,
    cfg: MetaSpec,
    algorithm: Any,
    backbone: Any,
    out_dir: Path,
    progress: Progress = None,
) -> FakeResult:
    _called(f"meta-pretrain-{algorithm.value}", progress)
    _prompt(out_dir, f"metapt_{algorithm.value}", shards_ref, cfg, cfg.meta)
    curve = [1.0 / (step + 1) for step in range(cfg.meta.meta_steps)]
    return FakeResult(seal(out_dir), {"meta_loss": curve, "final_loss": curve[-1]})


def ppt_pretrain(
    shards_ref: ArtifactRef,
    cfg: PPTSpec,
    backbone: Any,
    out_dir: Path,
    progress: Progress = None,
    balanced: bool = False,
) -> FakeResult:
    _called("ppt-balanced" if balanced else "ppt", progress)
    _prompt(out_dir, "ppt-balanced" if balanced else "ppt", shards_ref, cfg, cfg.ppt)
    return FakeResult(seal(out_dir), {"train_loss": [0.9, 0.7, 0.6]})


def evaluate_group(
    spec: EvalSpec,
    task_name: str,
    tasks_ref: ArtifactRef,
    shots: int,
    seed: int,
    prompts: dict[str, ArtifactRef | None],
    backbone: Any,
    out_dir: Path,
    progress: Progress = None,
) -> GroupResult:
    label = f"{task_name}/k{shots}/s{seed}"
    _called(f"evaluate-cells {label}", progress)
    if os.environ.get("METAPT_FAKE_FAIL") == label:
        raise RuntimeError(f"injected failure in {label}")
    cells = []
    tuning = to_dict(spec.fewshot)
    for init in spec.inits:  # pre-trained inits read their prompt, as the core does
        ref = prompts.get(init.value)
        accuracy = 0.5 + 0.4 * _number(
            init.value, shots, seed, ref.sha256 if ref else None, tasks_ref.sha256, tuning
        )
        cells.append(
            {
                "task": task_name,
                "method": init.value,
                "shots": shots,
                "seed": seed,
                "metrics": {"test_accuracy": accuracy, "test_macro_f1": accuracy - 0.05},
                "train_loss": [0.8, 0.6],
            }
        )
    out = Path(out_dir) / "cells.json"
    atomic_write_json(out, cells)
    return GroupResult(ArtifactRef.of(out), cells)


def meta_objective_check(
    shards_dir: Any, spec: Any, model: Any, prompts: Any, out_dir: Path, *_: Any, **__: Any
) -> tuple[Path, list[Any]]:
    _called(f"meta-objective-p{spec.meta.seed}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "meta_objective.csv", "pretrain_seed,init\n")
    return out, []


def build_report(
    cells: list[dict[str, Any]],
    zero_shot: dict[str, float],
    cfg: ReportSpec,
    out_dir: Path,
    untuned: Any = (),
    warnings: Any = None,
    progress: Progress = None,
    objective_files: Any = (),
) -> FakeResult:
    _called("report", progress)
    frame = pd.DataFrame(cells)
    table = frame.groupby(["task", "method", "shots"], as_index=False)["test_accuracy"].mean()
    table.to_csv(out_dir / "results.csv", index=False)
    lines = ["| task | method | shots | test_accuracy |", "|---|---|---|---|"]
    lines += [
        f"| {r.task} | {r.method} | {r.shots} | {r.test_accuracy:.3f} |" for r in table.itertuples()
    ]
    atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return FakeResult(seal(out_dir), {"cells": len(cells)})
