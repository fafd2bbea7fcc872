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
from metapt_core.report.evidence import accuracy_table, comparison_table, mdd_z
from metapt_core.report.nested import interval_name
from metapt_core.report.plots import bar_plot, forest_plot, interval_bar_plot, seed_plot
from metapt_core.report.tables import (
    AVERAGE,
    comparisons_table,
    init_order,
    markdown_table,
    metapt_methods,
    protocols,
    results_frame,
    summary_table,
)
from metapt_core.specs import ReportSpec
from metapt_core.store import ArtifactRef, atomic_path

BASELINES = ("random", "ppt")  # the comparisons the verdict states in words (when present)
CONTROLS = ("sample_vocab", "label_words", "text", "ppt_balanced")  # stated too, when present


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
    """One plain sentence on a unit-level paired comparison row (``method - baseline``,
    accuracy), for cells without per-row scores; bounds over fewer than 5 units are a range."""
    name = interval_name((int(row["n"]),), level)
    ci = f"{name} [{_pts(row['ci_low'], True)}, {_pts(row['ci_high'], True)}]"
    counts = (
        f"{row['wins']} wins / {row['ties']} ties / {row['losses']} losses over {row['n']} units; "
        f"paired t p={_p(row['t_pvalue'])}, Wilcoxon p={_p(row['wilcoxon_pvalue'])}"
    )
    diff = row["mean_diff"]
    who, base = row["method"], row["baseline"]
    if not math.isfinite(diff):
        return f"{who} vs {base}: no paired seeds."
    if diff > 0 and row["ci_low"] > 0 and name == "range":
        head = f"**{who} is ahead of {base}** by {_pts(diff, True)} points ({ci}, excludes 0)"
    elif diff > 0 and row["ci_low"] > 0:
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


def design_text(row: Mapping[str, Any]) -> str:
    """``2 pre-training x 3 few-shot seeds x 300 test rows``."""
    return (
        f"{row['pretrain_seeds']} pre-training x {row['fewshot_seeds']} few-shot seeds x "
        f"{row['rows']} test rows"
    )


def evidence_sentence(row: Mapping[str, Any], level: float) -> str:
    """One sentence on a nested comparison row: verdict, difference, bounds, design, MDD,
    variance shares and the per-cell McNemar counts (all generated from the row)."""
    bounds = f"{row['interval']} [{_pts(row['low'], True)}, {_pts(row['high'], True)}]"
    if row["interval"] == "range":
        bounds += f" (fewer than 5 seeds at a level: not a {int(round(100 * level))}% interval)"
    shares = (
        f"variance from pre-training seeds {_share(row['share_pretrain'])}, few-shot seeds "
        f"{_share(row['share_fewshot'])}, test rows {_share(row['share_rows'])}"
    )
    return (
        f"{row['method']} vs {row['baseline']}: **{row['verdict']}**, "
        f"{_pts(row['mean_diff'], True)} points, {bounds}; design {design_text(row)}; "
        f"minimum detectable difference {_pts(row['mdd'])} points; {shares}; McNemar per cell: "
        f"{row['mcnemar_wins']} of {row['cells']} cells better, {row['mcnemar_losses']} worse."
    )


def _share(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.0f}%"


def evidence_lines(
    evidence: pd.DataFrame, protocol: str, shots: int, order: Sequence[str], level: float
) -> list[str]:
    """The verdict bullets of one (protocol, shots): each MetaPT init against the baselines and
    controls present, average first, then per task."""
    part = evidence[(evidence["protocol"] == protocol) & (evidence["shots"] == shots)]
    lines: list[str] = []
    against = [b for b in (*BASELINES, *CONTROLS) if b in order]
    for method in metapt_methods(order):
        for base in against:
            rows = part[(part["method"] == method) & (part["baseline"] == base)]
            if rows.empty:
                continue
            ranked = sorted(rows.to_dict("records"), key=lambda r: r["task"] != AVERAGE)
            for row in ranked:
                where = "Average over tasks" if row["task"] == AVERAGE else f"Task {row['task']}"
                lines.append(f"- {where}: {evidence_sentence(row, level)}")
    return lines


def verdict_summary(evidence: pd.DataFrame, protocol: str, shots: int, order: Sequence[str]) -> str:
    """The answer in one line: each MetaPT init's average verdict against random and PPT."""
    part = evidence[
        (evidence["protocol"] == protocol)
        & (evidence["shots"] == shots)
        & (evidence["task"] == AVERAGE)
    ]
    said = []
    for method in metapt_methods(order):
        for base in BASELINES:
            rows = part[(part["method"] == method) & (part["baseline"] == base)]
            if not rows.empty:
                row = rows.iloc[0]
                said.append(
                    f"{method} vs {base}: {row['verdict']} ({_pts(row['mean_diff'], True)} "
                    f"points, {row['interval']} [{_pts(row['low'], True)}, "
                    f"{_pts(row['high'], True)}], MDD {_pts(row['mdd'])})"
                )
    if not said:
        return ""
    first = part.iloc[0]
    return f"**Answer (average over tasks, design {design_text(first)}):** " + "; ".join(said) + "."


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


def objective_lines(objective: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The report's "Meta-objective check" section and the one-line verdicts of the
    meta-learned prompts that did not train ("metapt_maml did not train on pre-training seed 1")."""
    from metapt_core.objective import verdict

    episodes = int(objective["episodes"].max())
    alphas = ", ".join(sorted({f"{a:g}" for a in objective["inner_lr"]}))
    lines = [
        "## Meta-objective check",
        "",
        "Did MetaPT lower the loss MAML minimises? Each pre-trained prompt and the initial prompt"
        f" are scored on {episodes} held-out-cluster episodes per pre-training seed (disjoint in "
        "rows from those that chose alpha and the kept prompt), before and after MetaPT's own "
        f"inner rule (alpha {alphas}), paired by episode; bounds are percentile bootstraps over "
        "episodes. A meta-learned prompt *trained* when the upper bound of its after-loss is "
        "below chance and below the initial prompt's; it *beats PPT on its own objective* when "
        "the bound of its after-loss minus PPT's is below 0. `support_prior` needs no model: "
        "each query row predicted by its episode's support label frequencies (add-one "
        "smoothed), i.e. what counting the support's labels alone reaches; a meta-learned "
        "prompt that does not beat it has learned no more than its task's label prior.",
        "",
        "| pre-training seed | init | loss before | loss after [bounds] | minus PPT [bounds] | "
        "minus support prior [bounds] | trained |",
        "|---|---|---|---|---|---|---|",
    ]
    untrained: list[str] = []
    verdicts: list[str] = []
    for row in objective.sort_values(["pretrain_seed", "init"]).to_dict("records"):
        diff = row["diff_vs_ppt"]
        minus = (
            f"{diff:+.3f} [{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]" if diff == diff else ""
        )
        prior = row.get("vs_prior", float("nan"))
        minus_prior = (
            f"{prior:+.3f} [{row['vs_prior_low']:+.3f}, {row['vs_prior_high']:+.3f}]"
            if prior == prior
            else ""
        )
        trained = (
            ""
            if row["trained"] != row["trained"] or row["trained"] is None
            else ("yes" if str(row["trained"]).lower() in ("true", "1", "1.0") else "**no**")
        )
        lines.append(
            f"| {int(row['pretrain_seed'])} | {row['init']} | {row['loss_before']:.3f} | "
            f"{row['loss_after']:.3f} [{row['after_low']:.3f}, {row['after_high']:.3f}] | "
            f"{minus} | {minus_prior} | {trained} |"
        )
        if trained:
            verdicts.append(verdict(row))
            if trained != "yes":
                untrained.append(
                    f"{row['init']} did not train on pre-training seed {int(row['pretrain_seed'])}"
                )
    chance = float(objective["chance"].iloc[0])
    lines += ["", f"Chance is log C = {chance:.4f} nats.", ""]
    lines += [f"- {v}" for v in verdicts] + ([""] if verdicts else [])
    return lines, untrained


def render_markdown(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    comparisons: pd.DataFrame,
    zero_shot: Mapping[str, float],
    cfg: ReportSpec,
    plots: Sequence[str],
    failed: Sequence[Mapping[str, Any]] = (),
    accuracy: pd.DataFrame | None = None,
    evidence: pd.DataFrame | None = None,
    warnings: Mapping[str, Sequence[str]] | None = None,
    objective: pd.DataFrame | None = None,
) -> str:
    """The report's Markdown text (the meta-objective check ahead of the verdicts)."""
    order = init_order(results, cfg.grid)
    level = cfg.grid.ci_level
    pct = int(round(100 * level))
    pseeds = sorted(int(s) for s in results["pretrain_seed"].unique())
    fseeds = sorted(int(s) for s in results["seed"].unique())
    lines = [
        "# MetaPT few-shot evaluation",
        "",
        f"Backbone `{cfg.backbone_name}`; tasks {', '.join(sorted(results['task'].unique()))}; "
        f"initialisations {', '.join(order)}; shots {sorted(int(s) for s in results['shots'].unique())}; "
        f"pre-training seeds {pseeds}; few-shot seeds {fseeds}; "
        f"protocols {', '.join(protocols(results))}. "
        "Scores are test accuracy / macro-F1 in percent. Every comparison is paired at every "
        "level: the same pre-training seed (PPT and MetaPT start from the same prompt and draw "
        "from the same clusters; untrained prompts are drawn from the same seed), the same "
        "few-shot split and minibatch order, the same test rows.",
        "",
    ]
    nested = evidence is not None and not evidence.empty
    if nested:
        lines += [
            f"Bounds are nested percentile bootstraps ({cfg.grid.bootstrap} resamples) over "
            "pre-training seeds, few-shot seeds within them and test rows within each cell; "
            f"they are called a {pct}% interval only when both seed levels have at least 5 "
            "units, else a range. The minimum detectable difference (MDD) is the true "
            f"difference this design detects with 80% power at a two-sided {100 - pct}% level "
            f"({mdd_z(level):.2f} standard errors, normal approximation).",
            "",
        ]
    else:
        n_units = int(results["unit"].nunique())
        lines += [
            f"These cells carry no per-row scores: bounds are bootstraps over the {n_units} "
            "(pre-training seed, few-shot seed) units, a range below 5 units.",
            "",
        ]
    untrained: list[str] = []
    if objective is not None and not objective.empty:
        found, untrained = objective_lines(objective)
        lines += found
    if warnings:
        lines += ["## Warnings from pre-training", ""]
        lines += [f"- {name}: {w}" for name, found in sorted(warnings.items()) for w in found]
        lines.append("")
    methods = metapt_methods(order)
    for protocol in protocols(results):
        for shots in sorted(int(s) for s in results["shots"].unique()):
            title = "" if protocol == "fewshot" else f", protocol {protocol}"
            caveat = (
                [
                    f"**{'; '.join(untrained)}**: the comparisons below include those seeds and "
                    "describe a failed optimisation there, not the method.",
                    "",
                ]
                if untrained
                else []
            )
            if nested:
                assert evidence is not None
                lines += [f"## Verdict, k={shots} per class{title}", "", *caveat]
                if stated := verdict_summary(evidence, protocol, shots, order):
                    lines += [stated, ""]
                found = evidence_lines(evidence, protocol, shots, order, level)
                lines += found or ["No MetaPT initialisation is in this grid."]
                lines += [""]
                forest = f"forest_{protocol}_k{shots}.png"
                if forest in plots:
                    lines += [f"![paired differences, {protocol}, k={shots}]({forest})", ""]
                continue
            lines += [f"## Verdict, k={shots} per class{title}", ""]
            if not methods:
                lines += ["No MetaPT initialisation is in this grid.", ""]
            acc = (
                comparisons[
                    (comparisons["shots"] == shots)
                    & (comparisons["metric"] == "accuracy")
                    & (comparisons["protocol"] == protocol)
                ]
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
                            "Average over tasks"
                            if row["task"] == AVERAGE
                            else f"Task {row['task']}"
                        )
                        lines.append(f"- {where}: {verdict_sentence(row, level)}")
            lines += [
                "",
                *stability_sentences(summary[summary["protocol"] == protocol], shots, order),
                "",
            ]

    if accuracy is not None and not accuracy.empty:
        acc_cols = ["protocol", "task", "shots", "init", "mean", "low", "high", "interval",
                    "pretrain_seeds", "fewshot_seeds", "rows", "mdd", "share_pretrain",
                    "share_fewshot", "share_rows", "untuned"]  # fmt: skip
        lines += [
            "## Accuracy with nested bounds, and untuned",
            "",
            "`untuned`: the initial prompt's test accuracy with no tuning (mean over "
            "pre-training seeds), beside the tuned mean.",
            "",
            markdown_table(accuracy[acc_cols], ["mean", "low", "high", "mdd", "share_pretrain",
                                                "share_fewshot", "share_rows", "untuned"]),
        ]  # fmt: skip
    if nested:
        assert evidence is not None
        ev_cols = ["protocol", "task", "shots", "method", "baseline", "mean_diff", "low", "high",
                   "interval", "pretrain_seeds", "fewshot_seeds", "rows", "mdd",
                   "share_pretrain", "share_fewshot", "share_rows", "mcnemar_wins",
                   "mcnemar_losses", "cells", "verdict"]  # fmt: skip
        lines += [
            "## Paired differences, nested (method - baseline)",
            "",
            markdown_table(evidence[ev_cols], ["mean_diff", "low", "high", "mdd",
                                               "share_pretrain", "share_fewshot", "share_rows"]),
        ]  # fmt: skip

    shown = summary.copy()
    shown["zero_shot_accuracy"] = [
        float(zero_shot.get(t, math.nan)) if t != AVERAGE else (
            sum(zero_shot.values()) / len(zero_shot) if zero_shot else math.nan)
        for t in shown["task"]
    ]  # fmt: skip
    columns = ["protocol", "task", "shots", "init", "n_seeds", "accuracy_mean", "accuracy_std", "accuracy_ci_low",
               "accuracy_ci_high", "macro_f1_mean", "macro_f1_std", "macro_f1_ci_low",
               "macro_f1_ci_high", "accuracy_stability", "zero_shot_accuracy"]  # fmt: skip
    percent = [c for c in columns if c not in ("task", "shots", "init", "n_seeds")]
    percent = [c for c in percent if c != "protocol"]
    lines += ["## Summary over units (pre-training seed, few-shot seed)", "",
              markdown_table(shown[columns], percent)]  # fmt: skip
    if not comparisons.empty:
        comp_cols = ["protocol", "task", "shots", "method", "baseline", "metric", "n", "mean_diff", "ci_low",
                     "ci_high", "wins", "ties", "losses", "t_pvalue", "wilcoxon_pvalue"]  # fmt: skip
        lines += ["## Paired comparisons over units (method - baseline)", "",
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
        shown = [p for p in plots if not p.startswith("forest_")]  # the forests: by the verdicts
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in shown] + [""]
    return "\n".join(lines)


def build_report(
    cell_results: Sequence[Mapping[str, Any]],
    zero_shot: Mapping[str, float],
    cfg: ReportSpec | PipelineConfig,
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
    accuracy = accuracy_table(results, cfg.grid, untuned)
    evidence = comparison_table(results, cfg.grid)
    order = init_order(results, cfg.grid)
    reference = dict(zero_shot)
    if zero_shot and set(results["task"]) <= set(zero_shot):
        reference[AVERAGE] = (
            sum(zero_shot[t] for t in set(results["task"])) / results["task"].nunique()
        )
    frames = [pd.read_csv(f) for f in objective_files if Path(f).stat().st_size > 0]
    frames = [f for f in frames if not f.empty]
    objective = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    final = Path(out_dir)
    names: list[str] = []
    with atomic_path(final) as tmp:
        tmp.mkdir(parents=True)
        if objective_files:
            objective.to_csv(tmp / "meta_objective.csv", index=False)
            names.append("meta_objective.csv")
        results.drop(columns=["test_correct"], errors="ignore").to_csv(
            tmp / "results.csv", index=False
        )
        summary.to_csv(tmp / "summary.csv", index=False)
        comparisons.to_csv(tmp / "comparisons.csv", index=False)
        accuracy.to_csv(tmp / "accuracy.csv", index=False)
        evidence.to_csv(tmp / "evidence.csv", index=False)
        pd.DataFrame([{k: v for k, v in u.items() if k != "test_correct"} for u in untuned]).to_csv(
            tmp / "untuned.csv", index=False
        )
        names += ["results.csv", "summary.csv", "comparisons.csv", "accuracy.csv",
                  "evidence.csv", "untuned.csv"]  # fmt: skip
        plots: list[str] = []
        primary = protocols(results)[0]
        tuned = results[results["protocol"] == primary]
        tuned_summary = summary[summary["protocol"] == primary]
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
        markdown = render_markdown(
            results, summary, comparisons, zero_shot, cfg, plots, failed, accuracy, evidence,
            warnings, objective,
        )  # fmt: skip
        (tmp / "report.md").write_text(markdown, encoding="utf-8")
        names += plots + ["report.md"]
    return ReportResult(
        ref=ArtifactRef.of(final),
        summary_markdown=markdown,
        files=[str(final / n) for n in names],
    )
