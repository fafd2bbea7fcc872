"""The evaluation report folder: CSV tables, plots and the Markdown summary, written atomically.

The Markdown text is :mod:`metapt_core.report.markdown`; every sentence of its verdict is
generated (:mod:`metapt_core.report.verdict`), nothing in it is written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metapt_core.report.evidence import accuracy_table, comparison_table
from metapt_core.report.markdown import render_markdown
from metapt_core.report.plots import bar_plot, forest_plot, interval_bar_plot, seed_plot
from metapt_core.report.tables import (
    AVERAGE,
    comparisons_table,
    init_order,
    protocols,
    results_frame,
    summary_table,
)
from metapt_core.specs import ReportSpec
from metapt_core.store import ArtifactRef, atomic_path


@dataclass(frozen=True)
class ReportResult:
    """A written report: its folder, its Markdown text and the files in it."""

    ref: ArtifactRef
    summary_markdown: str
    files: list[str]


@dataclass(frozen=True)
class _Tables:
    """The report's computed tables (one row per finished cell, and the statistics over them)."""

    results: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    accuracy: pd.DataFrame
    evidence: pd.DataFrame


def build_report(
    cell_results: Sequence[Mapping[str, Any]],
    zero_shot: Mapping[str, float],
    cfg: ReportSpec,
    out_dir: str | Path,
    untuned: Sequence[Mapping[str, Any]] = (),
    warnings: Mapping[str, Sequence[str]] | None = None,
    objective_files: Sequence[str | Path] = (),
) -> ReportResult:
    """Write results.csv, summary.csv, comparisons.csv, accuracy.csv, evidence.csv,
    untuned.csv, meta_objective.csv, report.md and PNG plots to ``out_dir``.

    The folder is built under a temporary name and renamed into place, so it is complete or
    absent. Cells with an ``error`` field (or no test accuracy) are listed as failed and left
    out of the statistics.

    Args:
        cell_results: ``CellResult.to_dict()`` rows (any order).
        zero_shot: task -> zero-shot test accuracy of the backbone (may be empty).
        untuned: per (task, init, pre-training seed) test scores with no tuning.
        warnings: pre-trained prompt (``init@seed``) -> its collapse warnings.
        objective_files: each pre-training seed's ``meta_objective.csv`` (the meta-objective
            check, :mod:`metapt_core.pretraining.objective`), joined into one.
        cfg: what the report reads (:class:`~metapt_core.specs.ReportSpec`: ``grid.inits``,
            ``grid.bootstrap``, ``grid.ci_level``, the backbone's name).
        out_dir: the report folder.
    """
    ok = [
        dict(r) for r in cell_results if not r.get("error") and r.get("test_accuracy") is not None
    ]
    failed = [r for r in cell_results if r.get("error") or r.get("test_accuracy") is None]
    results = results_frame(ok)
    tables = _Tables(
        results=results,
        summary=summary_table(results, cfg.grid),
        comparisons=comparisons_table(results, cfg.grid),
        accuracy=accuracy_table(results, cfg.grid, untuned),
        evidence=comparison_table(results, cfg.grid),
    )
    objective = read_objective(objective_files)
    reference = zero_shot_reference(zero_shot, results)
    final = Path(out_dir)
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        names = ["meta_objective.csv"] if objective_files else []
        if objective_files:
            objective.to_csv(tmp / "meta_objective.csv", index=False)
        names += _write_tables(tables, untuned, tmp)
        plots = _write_plots(tables, reference, zero_shot, init_order(results, cfg.grid), tmp)
        markdown = render_markdown(
            results, tables.summary, tables.comparisons, zero_shot, cfg, plots, failed,
            tables.accuracy, tables.evidence, warnings, objective,
        )  # fmt: skip
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        names += plots + ["report.md"]
    return ReportResult(
        ref=ArtifactRef.of(final),
        summary_markdown=markdown,
        files=[str(final / n) for n in names],
    )


def read_objective(objective_files: Sequence[str | Path]) -> pd.DataFrame:
    """The pre-training seeds' meta-objective checks joined into one frame (empty files and
    frames skipped; none: an empty frame)."""
    frames = [pd.read_csv(f) for f in objective_files if Path(f).stat().st_size > 0]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def zero_shot_reference(zero_shot: Mapping[str, float], results: pd.DataFrame) -> dict[str, float]:
    """The zero-shot accuracy per task, with its mean over the results' tasks as ``AVERAGE``
    when every task has one (the plots' reference line)."""
    reference = dict(zero_shot)
    if zero_shot and set(results["task"]) <= set(zero_shot):
        reference[AVERAGE] = (
            sum(zero_shot[t] for t in set(results["task"])) / results["task"].nunique()
        )
    return reference


def _write_tables(tables: _Tables, untuned: Sequence[Mapping[str, Any]], tmp: Path) -> list[str]:
    """Write the CSV tables into ``tmp``; return their names."""
    tables.results.drop(columns=["test_correct"], errors="ignore").to_csv(
        tmp / "results.csv", index=False
    )
    tables.summary.to_csv(tmp / "summary.csv", index=False)
    tables.comparisons.to_csv(tmp / "comparisons.csv", index=False)
    tables.accuracy.to_csv(tmp / "accuracy.csv", index=False)
    tables.evidence.to_csv(tmp / "evidence.csv", index=False)
    pd.DataFrame([{k: v for k, v in u.items() if k != "test_correct"} for u in untuned]).to_csv(
        tmp / "untuned.csv", index=False
    )
    return ["results.csv", "summary.csv", "comparisons.csv", "accuracy.csv", "evidence.csv",
            "untuned.csv"]  # fmt: skip


def _write_plots(
    tables: _Tables,
    reference: Mapping[str, float],
    zero_shot: Mapping[str, float],
    order: Sequence[str],
    tmp: Path,
) -> list[str]:
    """Draw each shot count's forests (per protocol), accuracy bars and seed plot into ``tmp``;
    return their names in the order drawn."""
    results, evidence, accuracy = tables.results, tables.evidence, tables.accuracy
    plots: list[str] = []
    primary = protocols(results)[0]
    tuned = results[results["protocol"] == primary]
    tuned_summary = tables.summary[tables.summary["protocol"] == primary]
    for shots in sorted(int(s) for s in results["shots"].unique()):
        bars = f"accuracy_bars_k{shots}.png"
        seeds = f"accuracy_seeds_k{shots}.png"
        if not evidence.empty:
            for protocol in protocols(results):
                forest = f"forest_{protocol}_k{shots}.png"
                forest_plot(evidence, protocol, shots, tmp / forest)
                plots.append(forest)
        if not accuracy.empty:
            interval_bar_plot(accuracy, reference, primary, shots, order, tmp / bars)
        else:
            bar_plot(tuned_summary, reference, shots, order, tmp / bars)
        seed_plot(tuned, zero_shot, shots, order, tmp / seeds)
        plots += [bars, seeds]
    return plots
