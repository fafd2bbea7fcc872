"""Report tables, verdict and files from synthetic cell results with known numbers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

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
from metapt_core.report import build_report, comparisons_table, results_frame, summary_table
from metapt_core.report.stats import bootstrap_ci
from metapt_core.report.tables import stable_seed
from metapt_core.specs import ReportSpec

ACC = {  # (task, init) -> accuracy per seed 0, 1, 2
    ("mr", "random"): [0.60, 0.70, 0.50],
    ("mr", "ppt"): [0.70, 0.72, 0.68],
    ("mr", "metapt_maml"): [0.80, 0.82, 0.78],
    ("cr", "random"): [0.55, 0.65, 0.60],
    ("cr", "ppt"): [0.66, 0.60, 0.63],
    ("cr", "metapt_maml"): [0.64, 0.60, 0.62],
}


def cell_rows() -> list[dict]:
    out = []
    for (task, init), accs in ACC.items():
        for seed, acc in enumerate(accs):
            out.append({
                "cell_id": f"{task}__{init}__k4__s{seed}", "task": task, "init": init, "shots": 4,
                "seed": seed, "split_seed": seed, "train_seed": 10_000 + seed,
                "split_id": f"{task}-{seed}", "test_accuracy": acc, "test_macro_f1": acc - 0.05,
                "n_test": 100, "history": {"train_loss": [1.0]},
            })  # fmt: skip
    return out


def config() -> PipelineConfig:
    task = lambda name: TargetTaskConfig(name=name, train=SourceConfig(name=name, path=name))  # noqa: E731
    grid = GridConfig(
        inits=[InitMethod.RANDOM, InitMethod.PPT, InitMethod.METAPT_MAML], bootstrap=500
    )
    return PipelineConfig(tasks=[task("mr"), task("cr")], grid=grid)


def test_summary_known_values():
    cfg = config()
    summary = summary_table(results_frame(cell_rows()), cfg.grid).set_index(["task", "init"])
    row = summary.loc[("mr", "random")]
    assert row["accuracy_mean"] == pytest.approx(0.6)
    assert row["accuracy_std"] == pytest.approx(0.1)  # deviations +-0.1, 0: sqrt(0.02 / 2)
    assert row["macro_f1_mean"] == pytest.approx(0.55)
    # the bounds are grid.bootstrap resamples at grid.ci_level, seeded by the row's key
    # (task, shots, init, metric) of the seeds' values in unit order
    seed = stable_seed("mr", 4, "random", "accuracy")
    expected = bootstrap_ci([0.60, 0.70, 0.50], 500, 0.95, seed)
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx(expected)
    # At 50% the bounds are known by hand, whatever the seed: a resample sums three draws of
    # {0, 1, 2} tenths above the minimum, sums 0..6 with counts 1, 3, 6, 7, 6, 3, 1 of 27, so
    # P(S <= 1) = 4/27 < 0.25 <= P(S <= 2) = 10/27 and P(S <= 3) = 17/27 < 0.75 <= 23/27:
    # the quartiles of the resample means are min + 0.2/3 and min + 0.4/3 (500 resamples put
    # the empirical quartiles over 5 standard errors from either neighbouring sum).
    half = summary_table(results_frame(cell_rows()), dataclasses.replace(cfg.grid, ci_level=0.5))
    half_row = half.set_index(["task", "init"]).loc[("mr", "random")]
    assert (half_row["accuracy_ci_low"], half_row["accuracy_ci_high"]) == pytest.approx(
        (0.5 + 0.2 / 3, 0.5 + 0.4 / 3)
    )
    assert (half_row["macro_f1_ci_low"], half_row["macro_f1_ci_high"]) == pytest.approx(
        (0.45 + 0.2 / 3, 0.45 + 0.4 / 3)
    )
    avg = summary.loc[("AVERAGE", "metapt_maml")]
    # per-seed means over tasks: 0.72, 0.71, 0.70
    assert avg["accuracy_mean"] == pytest.approx(0.71)
    assert avg["accuracy_std"] == pytest.approx(0.01)
    assert avg["accuracy_stability"] == pytest.approx((0.02 + 0.02) / 2)
    assert avg["n_seeds"] == 3


def test_comparisons_pair_on_seeds():
    cfg = config()
    comp = comparisons_table(results_frame(cell_rows()), cfg.grid)
    assert set(comp["method"]) == {"metapt_maml"}
    row = comp[
        (comp.task == "mr") & (comp.baseline == "random") & (comp.metric == "accuracy")
    ].iloc[0]
    assert row["mean_diff"] == pytest.approx(0.2) and (row["wins"], row["losses"]) == (3, 0)
    assert row["wilcoxon_pvalue"] == pytest.approx(0.25)  # 3 of 3 positive: 2 / 2^3
    cr = comp[(comp.task == "cr") & (comp.baseline == "ppt") & (comp.metric == "accuracy")].iloc[0]
    assert cr["mean_diff"] == pytest.approx(-0.01) and (cr["wins"], cr["ties"], cr["losses"]) == (
        0,
        1,
        2,
    )


def test_mismatched_splits_are_refused():
    rows = cell_rows()
    rows[0]["split_id"] = "something-else"
    with pytest.raises(DataError, match="different splits"):
        comparisons_table(results_frame(rows), config().grid)


def test_report_files_and_generated_verdict(tmp_path: Path):
    cfg = config()
    rows = cell_rows() + [{"cell_id": "cr__ppt__k4__s9", "task": "cr", "init": "ppt", "shots": 4,
                           "seed": 9, "error": "RuntimeError: boom", "test_accuracy": None}]  # fmt: skip
    out = build_report(rows, {"mr": 0.55, "cr": 0.5}, ReportSpec.of(cfg), tmp_path / "report")
    names = sorted(Path(f).name for f in out.files)
    assert names == sorted(["results.csv", "summary.csv", "comparisons.csv", "report.md",
                            "accuracy.csv", "evidence.csv", "untuned.csv",
                            "accuracy_bars_k4.png", "accuracy_seeds_k4.png"])  # fmt: skip
    assert all(Path(f).stat().st_size > 0 for f in out.files)
    assert out.ref.is_valid()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    md = (tmp_path / "report" / "report.md").read_text()
    assert md == out.summary_markdown
    # three units: the bounds are a range, and the words say so
    assert "Task mr: **metapt_maml is ahead of random** by +20.0 points (range [" in md
    assert "95% CI" not in md
    assert "Task cr: **metapt_maml does not beat ppt**: -1.0 points" in md
    assert "Average over tasks: **metapt_maml" in md
    assert "cr__ppt__k4__s9: RuntimeError: boom" in md
    assert "is more stable than random" in md
    assert len(pd.read_csv(tmp_path / "report" / "results.csv")) == 18


def test_report_is_reproducible(tmp_path: Path):
    spec = ReportSpec.of(config())
    a = build_report(cell_rows(), {}, spec, tmp_path / "a")
    b = build_report(cell_rows(), {}, spec, tmp_path / "b")
    assert a.summary_markdown == b.summary_markdown
    sa = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert sa.equals(pd.read_csv(tmp_path / "b" / "summary.csv"))
    assert not math.isnan(sa["accuracy_ci_low"].iloc[0])
