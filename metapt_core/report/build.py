"""The evaluation report: CSV tables, plots and a Markdown summary whose claims are computed.

Every sentence of the verdict is generated from the paired comparisons and the summary table;
nothing in it is written by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from metapt_core.config import PipelineConfig
from metapt_core.report.plots import bar_plot, seed_plot
from metapt_core.report.tables import (
    AVERAGE,
    comparisons_table,
    init_order,
    markdown_table,
    metapt_methods,
    results_frame,
    summary_table,
)
from metapt_core.specs import ReportSpec
from metapt_core.store import ArtifactRef, atomic_path

BASELINES = ("random", "ppt")  # the comparisons the verdict states in words


@dataclass(frozen=True)
class ReportResult:
    """A written report: its folder, its Markdown text and the files in it."""

    ref: ArtifactRef
    summary_markdown: str
    files: list[str]


def _pts(value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _p(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def verdict_sentence(row: Mapping[str, Any], level: float) -> str:
    """One plain sentence on a paired comparison row (``method - baseline``, accuracy)."""
    ci = (
        f"{int(round(100 * level))}% CI [{_pts(row['ci_low'], True)}, {_pts(row['ci_high'], True)}]"
    )
    counts = (
        f"{row['wins']} wins / {row['ties']} ties / {row['losses']} losses over {row['n']} seeds; "
        f"paired t p={_p(row['t_pvalue'])}, Wilcoxon p={_p(row['wilcoxon_pvalue'])}"
    )
    diff = row["mean_diff"]
    who, base = row["method"], row["baseline"]
    if not math.isfinite(diff):
        return f"{who} vs {base}: no paired seeds."
    if diff > 0 and row["ci_low"] > 0:
        head = f"**{who} beats {base}** by {_pts(diff, True)} accuracy points ({ci}, excludes 0)"
    elif diff > 0:
        head = (
            f"**{who} is ahead of {base} on average but not clearly**: {_pts(diff, True)} points "
            f"({ci}, includes 0)"
        )
    elif diff == 0:
        head = f"**{who} ties {base}**: {_pts(diff, True)} points ({ci})"
    else:
        clear = "excludes 0" if row["ci_high"] < 0 else "includes 0"
        head = f"**{who} does not beat {base}**: {_pts(diff, True)} points ({ci}, {clear})"
    return f"{head}; {counts}."


def stability_sentences(summary: pd.DataFrame, shots: int, order: Sequence[str]) -> list[str]:
    """How the spread across seeds (mean over tasks of the std of accuracy) compares."""
    avg = summary[(summary["task"] == AVERAGE) & (summary["shots"] == shots)].set_index("init")
    if avg.empty or avg["accuracy_stability"].isna().all():
        return ["Stability: not available (fewer than two seeds)."]
    spread = {i: float(avg.at[i, "accuracy_stability"]) for i in order if i in avg.index}
    listing = ", ".join(f"{i} {_pts(v)}" for i, v in spread.items())
    out = [f"Spread across seeds (mean over tasks of the std of accuracy, points): {listing}."]
    for method in metapt_methods(order):
        for base in BASELINES:
            if (
                method in spread
                and base in spread
                and all(map(math.isfinite, (spread[method], spread[base])))
            ):
                word = (
                    "more stable than"
                    if spread[method] < spread[base]
                    else ("as stable as" if spread[method] == spread[base] else "less stable than")
                )
                out.append(
                    f"{method} is {word} {base} ({_pts(spread[method])} vs {_pts(spread[base])} points)."
                )
    return out


def render_markdown(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    comparisons: pd.DataFrame,
    zero_shot: Mapping[str, float],
    cfg: ReportSpec,
    plots: Sequence[str],
    failed: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The report's Markdown text."""
    order = init_order(results, cfg.grid)
    level = cfg.grid.ci_level
    lines = [
        "# MetaPT few-shot evaluation",
        "",
        f"Backbone `{cfg.backbone_name}`; tasks {', '.join(sorted(results['task'].unique()))}; "
        f"initialisations {', '.join(order)}; shots {sorted(int(s) for s in results['shots'].unique())}; "
        f"seeds {sorted(int(s) for s in results['seed'].unique())}. "
        f"Scores are test accuracy / macro-F1 in percent; intervals are {int(round(100 * level))}% "
        f"percentile bootstrap intervals over seeds ({cfg.grid.bootstrap} resamples). "
        "Paired comparisons use the same split (and minibatch order) for both initialisations.",
        "",
    ]
    n_seeds = int(results["seed"].nunique())
    lines += [
        f"With {n_seeds} seeds a bootstrap interval over seeds is coarse and the smallest possible "
        f"two-sided Wilcoxon p-value is {2 / 2**n_seeds:.3g}: read the verdicts with that in mind.",
        "",
    ]
    methods = metapt_methods(order)
    for shots in sorted(int(s) for s in results["shots"].unique()):
        lines += [f"## Verdict, k={shots} per class", ""]
        if not methods:
            lines += ["No MetaPT initialisation is in this grid.", ""]
        acc = (
            comparisons[(comparisons["shots"] == shots) & (comparisons["metric"] == "accuracy")]
            if not comparisons.empty
            else comparisons
        )
        for method in methods:
            for base in BASELINES:
                rows = (
                    acc[(acc["method"] == method) & (acc["baseline"] == base)]
                    if not acc.empty
                    else acc
                )
                if rows.empty:
                    lines.append(f"- {method} vs {base}: {base} is not in this grid.")
                    continue
                for _, row in rows.iterrows():
                    where = (
                        "Average over tasks" if row["task"] == AVERAGE else f"Task {row['task']}"
                    )
                    lines.append(f"- {where}: {verdict_sentence(row, level)}")
        lines += ["", *stability_sentences(summary, shots, order), ""]

    shown = summary.copy()
    shown["zero_shot_accuracy"] = [
        float(zero_shot.get(t, math.nan)) if t != AVERAGE else (
            sum(zero_shot.values()) / len(zero_shot) if zero_shot else math.nan)
        for t in shown["task"]
    ]  # fmt: skip
    columns = ["task", "shots", "init", "n_seeds", "accuracy_mean", "accuracy_std", "accuracy_ci_low",
               "accuracy_ci_high", "macro_f1_mean", "macro_f1_std", "macro_f1_ci_low",
               "macro_f1_ci_high", "accuracy_stability", "zero_shot_accuracy"]  # fmt: skip
    percent = [c for c in columns if c not in ("task", "shots", "init", "n_seeds")]
    lines += ["## Summary", "", markdown_table(shown[columns], percent)]
    if not comparisons.empty:
        comp_cols = ["task", "shots", "method", "baseline", "metric", "n", "mean_diff", "ci_low",
                     "ci_high", "wins", "ties", "losses", "t_pvalue", "wilcoxon_pvalue"]  # fmt: skip
        lines += ["## Paired comparisons (method - baseline)", "",
                  markdown_table(comparisons[comp_cols], ["mean_diff", "ci_low", "ci_high"])]  # fmt: skip
    if zero_shot:
        lines += ["## Zero-shot reference (no prompt)", ""]
        lines += [f"- {t}: {_pts(v)}% accuracy" for t, v in sorted(zero_shot.items())]
        lines.append("")
    if failed:
        lines += ["## Failed cells (left out of every statistic)", ""]
        lines += [f"- {f.get('cell_id', '?')}: {f.get('error', 'no result')}" for f in failed]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def build_report(
    cell_results: Sequence[Mapping[str, Any]],
    zero_shot: Mapping[str, float],
    cfg: ReportSpec | PipelineConfig,
    out_dir: str | Path,
) -> ReportResult:
    """Write results.csv, summary.csv, comparisons.csv, report.md and PNG plots to ``out_dir``.

    The folder is built under a temporary name and renamed into place, so it is complete or
    absent. Cells with an ``error`` field (or no test accuracy) are listed as failed and left
    out of the statistics.

    Args:
        cell_results: ``CellResult.to_dict()`` rows (any order).
        zero_shot: task -> zero-shot test accuracy of the backbone (may be empty).
        cfg: what the report reads (:class:`~metapt_core.specs.ReportSpec`: ``grid.inits``,
            ``grid.bootstrap``, ``grid.ci_level``, the backbone's name), or a whole config.
        out_dir: the report folder.
    """
    cfg = ReportSpec.of(cfg)
    ok = [
        dict(r) for r in cell_results if not r.get("error") and r.get("test_accuracy") is not None
    ]
    failed = [r for r in cell_results if r.get("error") or r.get("test_accuracy") is None]
    results = results_frame(ok)
    summary = summary_table(results, cfg.grid)
    comparisons = comparisons_table(results, cfg.grid)
    order = init_order(results, cfg.grid)
    reference = dict(zero_shot)
    if zero_shot and set(results["task"]) <= set(zero_shot):
        reference[AVERAGE] = (
            sum(zero_shot[t] for t in set(results["task"])) / results["task"].nunique()
        )
    final = Path(out_dir)
    names: list[str] = []
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        results.to_csv(tmp / "results.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        comparisons.to_csv(tmp / "comparisons.csv", index=False)
        names += ["results.csv", "summary.csv", "comparisons.csv"]
        plots: list[str] = []
        for shots in sorted(int(s) for s in results["shots"].unique()):
            bars = f"accuracy_bars_k{shots}.png"
            seeds = f"accuracy_seeds_k{shots}.png"
            bar_plot(summary, reference, shots, order, tmp / bars)
            seed_plot(results, zero_shot, shots, order, tmp / seeds)
            plots += [bars, seeds]
        markdown = render_markdown(results, summary, comparisons, zero_shot, cfg, plots, failed)
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        names += plots + ["report.md"]
    return ReportResult(
        ref=ArtifactRef.of(final),
        summary_markdown=markdown,
        files=[str(final / n) for n in names],
    )
