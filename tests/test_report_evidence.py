"""The report's nested evidence from per-row scores: planted effects, none, pairing, words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from metapt_core.config import (
    GridConfig,
    InitMethod,
    PipelineConfig,
    SourceConfig,
    TargetTaskConfig,
)
from metapt_core.errors import DataError
from metapt_core.report import build_report, results_frame
from metapt_core.report.evidence import accuracy_table, comparison_table, design
from metapt_core.specs import ReportSpec

INITS = [InitMethod.RANDOM, InitMethod.PPT, InitMethod.METAPT_MAML]


def config(bootstrap: int = 400) -> PipelineConfig:
    task = lambda name: TargetTaskConfig(name=name, train=SourceConfig(name=name, path=name))  # noqa: E731
    return PipelineConfig(
        tasks=[task("mr"), task("cr")], grid=GridConfig(inits=INITS, bootstrap=bootstrap)
    )


def cells(p: int, f: int, r: int, effect: float, seed: int = 0, base: float = 0.6) -> list[dict]:
    """Cells whose rows are right with probability base (+ effect for MetaPT), with a shared
    per-row difficulty (rows are paired) and per-seed shifts."""
    rng = np.random.default_rng(seed)
    out = []
    for task in ("mr", "cr"):
        difficulty = rng.normal(0, 1.0, size=r)
        for ps in range(p):
            shift_p = rng.normal(0, 0.2)
            for fs in range(f):
                shift_f = rng.normal(0, 0.2)
                noise = rng.random(r)
                for init in INITS:
                    prob = base + (effect if init is InitMethod.METAPT_MAML else 0.0)
                    logit = np.log(prob / (1 - prob)) + difficulty + shift_p + shift_f
                    correct = noise < 1 / (1 + np.exp(-logit))
                    out.append({
                        "cell_id": f"{task}__{init.value}__k4__s{fs}__p{ps}", "task": task,
                        "init": init.value, "shots": 4, "seed": fs, "pretrain_seed": ps,
                        "protocol": "fewshot", "split_id": f"{task}-{fs}",
                        "test_accuracy": float(correct.mean()), "test_macro_f1": 0.5,
                        "n_test": r, "test_correct": "".join("1" if c else "0" for c in correct),
                    })  # fmt: skip
    return out


def average(table: pd.DataFrame, method: str, baseline: str) -> pd.Series:
    rows = table[
        (table["task"] == "AVERAGE") & (table["method"] == method) & (table["baseline"] == baseline)
    ]
    assert len(rows) == 1
    return rows.iloc[0]


def test_a_planted_effect_is_found_and_named_by_its_design() -> None:
    grid = ReportSpec.of(config()).grid
    table = comparison_table(results_frame(cells(5, 5, 150, 0.12)), grid)
    row = average(table, "metapt_maml", "random")
    assert row["low"] > 0 and row["verdict"] == "better"
    assert row["interval"] == "95% interval"
    assert (row["pretrain_seeds"], row["fewshot_seeds"], row["rows"]) == (5, 5, 300)
    assert 0 < row["mdd"] < row["mean_diff"]
    assert row["mcnemar_wins"] >= 1 and row["mcnemar_losses"] == 0 and row["cells"] == 50
    shares = row[["share_pretrain", "share_fewshot", "share_rows"]].to_numpy(float)
    assert shares.sum() == pytest.approx(1.0) and shares[2] > 0.5  # rows dominate 1/0 scores


def test_no_effect_is_no_difference_and_few_seeds_are_a_range() -> None:
    grid = ReportSpec.of(config()).grid
    frame = results_frame(cells(2, 3, 120, 0.0, seed=3))
    row = average(comparison_table(frame, grid), "metapt_maml", "ppt")
    assert row["interval"] == "range"  # 2 pre-training seeds
    assert row["low"] <= 0 <= row["high"] and row["verdict"] == "no difference detected"
    acc = accuracy_table(frame, grid)
    assert set(acc["interval"]) == {"range"}


def test_pairing_across_pretraining_seeds_is_checked() -> None:
    frame = results_frame(cells(2, 2, 50, 0.1))
    part = frame[(frame["task"] == "mr") & (frame["init"] == "ppt")]
    x, pseeds, fseeds, _ = design(part)
    assert x.shape == (2, 2, 50) and pseeds == [0, 1] and fseeds == [0, 1]
    # the same cell of two inits must have been trained on the same rows
    bad = cells(2, 2, 50, 0.1)
    for row in bad:
        if row["init"] == "ppt" and row["pretrain_seed"] == 1 and row["seed"] == 0:
            row["split_id"] = "other"
    with pytest.raises(DataError, match="different splits"):
        comparison_table(results_frame(bad), ReportSpec.of(config()).grid)
    # a pre-training seed missing for one init leaves the design unbalanced: not compared
    missing = [
        r for r in cells(2, 2, 50, 0.1) if not (r["init"] == "ppt" and r["pretrain_seed"] == 1)
    ]
    table = comparison_table(results_frame(missing), ReportSpec.of(config()).grid)
    assert (
        table[table["baseline"] == "ppt"].empty and not table[table["baseline"] == "random"].empty
    )


def test_report_leads_with_the_answer_and_its_design(tmp_path: Path) -> None:
    rows = cells(5, 5, 100, 0.15)
    untuned = [{"task": t, "init": i.value, "pretrain_seed": p, "accuracy": 0.5, "macro_f1": 0.4,
                "n": 100} for t in ("mr", "cr") for i in INITS for p in range(5)]  # fmt: skip
    out = build_report(
        rows,
        {},
        ReportSpec.of(config()),
        tmp_path / "r",
        untuned,
        {"ppt@0": ["val loss at chance"]},
    )
    md = out.summary_markdown
    assert (
        "**Answer (average over tasks, design 5 pre-training x 5 few-shot seeds x 200 test rows):**"
        in md
    )
    assert "metapt_maml vs random: better" in md
    assert "minimum detectable difference" in md and "95% interval [" in md
    assert "- ppt@0: val loss at chance" in md
    evidence = pd.read_csv(tmp_path / "r" / "evidence.csv")
    assert {"mdd", "share_pretrain", "verdict"} <= set(evidence.columns)
    acc = pd.read_csv(tmp_path / "r" / "accuracy.csv")
    assert acc["untuned"].dropna().eq(0.5).all()
    assert "test_correct" not in pd.read_csv(tmp_path / "r" / "results.csv").columns
