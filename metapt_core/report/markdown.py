"""The report's Markdown text, section by section (the meta-objective check ahead of the verdicts).

Each section is a list of lines; :func:`render_markdown` joins them in the report's order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from metapt_core.report.evidence import mdd_z
from metapt_core.report.tables import AVERAGE, init_order, markdown_table, metapt_methods, protocols
from metapt_core.report.verdict import (
    BASELINES,
    evidence_lines,
    points,
    stability_sentences,
    verdict_sentence,
    verdict_summary,
)
from metapt_core.specs import ReportSpec


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
    nested = evidence is not None and not evidence.empty
    lines = header_lines(results, cfg, order) + bounds_lines(results, cfg, nested)
    untrained: list[str] = []
    if objective is not None and not objective.empty:
        found, untrained = objective_lines(objective)
        lines += found
    lines += warning_lines(warnings)
    for protocol in protocols(results):
        for shots in sorted(int(s) for s in results["shots"].unique()):
            if nested:
                assert evidence is not None
                lines += nested_verdict_lines(
                    evidence, protocol, shots, order, level, plots, untrained
                )
            else:
                lines += unit_verdict_lines(comparisons, summary, protocol, shots, order, level)
    if accuracy is not None and not accuracy.empty:
        lines += accuracy_lines(accuracy)
    if nested:
        assert evidence is not None
        lines += evidence_table_lines(evidence)
    lines += summary_lines(summary, zero_shot) + comparison_table_lines(comparisons)
    lines += zero_shot_lines(zero_shot) + failed_lines(failed) + plot_lines(plots)
    return "\n".join(lines)


def header_lines(results: pd.DataFrame, cfg: ReportSpec, order: Sequence[str]) -> list[str]:
    """The title and the design: backbone, tasks, initialisations, shots, seeds, protocols."""
    pseeds = sorted(int(s) for s in results["pretrain_seed"].unique())
    fseeds = sorted(int(s) for s in results["seed"].unique())
    return [
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


def bounds_lines(results: pd.DataFrame, cfg: ReportSpec, nested: bool) -> list[str]:
    """How the bounds were computed: nested bootstraps, or bootstraps over units."""
    level = cfg.grid.ci_level
    pct = int(round(100 * level))
    if nested:
        return [
            f"Bounds are nested percentile bootstraps ({cfg.grid.bootstrap} resamples) over "
            "pre-training seeds, few-shot seeds within them and test rows within each cell; "
            f"they are called a {pct}% interval only when both seed levels have at least 5 "
            "units, else a range. The minimum detectable difference (MDD) is the true "
            f"difference this design detects with 80% power at a two-sided {100 - pct}% level "
            f"({mdd_z(level):.2f} standard errors, normal approximation).",
            "",
        ]
    n_units = int(results["unit"].nunique())
    return [
        f"These cells carry no per-row scores: bounds are bootstraps over the {n_units} "
        "(pre-training seed, few-shot seed) units, a range below 5 units.",
        "",
    ]


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


def warning_lines(warnings: Mapping[str, Sequence[str]] | None) -> list[str]:
    """The "Warnings from pre-training" section (none: no lines)."""
    if not warnings:
        return []
    lines = ["## Warnings from pre-training", ""]
    lines += [f"- {name}: {w}" for name, found in sorted(warnings.items()) for w in found]
    lines.append("")
    return lines


def _verdict_heading(protocol: str, shots: int) -> str:
    title = "" if protocol == "fewshot" else f", protocol {protocol}"
    return f"## Verdict, k={shots} per class{title}"


def nested_verdict_lines(
    evidence: pd.DataFrame,
    protocol: str,
    shots: int,
    order: Sequence[str],
    level: float,
    plots: Sequence[str],
    untrained: Sequence[str],
) -> list[str]:
    """One (protocol, shots) verdict from the nested evidence: the seeds that did not train,
    the answer, the bullets and the forest plot."""
    caveat = (
        [
            f"**{'; '.join(untrained)}**: the comparisons below include those seeds and "
            "describe a failed optimisation there, not the method.",
            "",
        ]
        if untrained
        else []
    )
    lines = [_verdict_heading(protocol, shots), "", *caveat]
    if stated := verdict_summary(evidence, protocol, shots, order):
        lines += [stated, ""]
    found = evidence_lines(evidence, protocol, shots, order, level)
    lines += found or ["No MetaPT initialisation is in this grid."]
    lines += [""]
    forest = f"forest_{protocol}_k{shots}.png"
    if forest in plots:
        lines += [f"![paired differences, {protocol}, k={shots}]({forest})", ""]
    return lines


def unit_verdict_lines(
    comparisons: pd.DataFrame,
    summary: pd.DataFrame,
    protocol: str,
    shots: int,
    order: Sequence[str],
    level: float,
) -> list[str]:
    """One (protocol, shots) verdict from the unit-level comparisons (cells without per-row
    scores): a sentence per MetaPT init, baseline and task, then the stability sentences."""
    methods = metapt_methods(order)
    lines = [_verdict_heading(protocol, shots), ""]
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
                acc[(acc["method"] == method) & (acc["baseline"] == base)] if not acc.empty else acc
            )
            if rows.empty:
                lines.append(f"- {method} vs {base}: {base} is not in this grid.")
                continue
            for _, row in rows.iterrows():
                where = "Average over tasks" if row["task"] == AVERAGE else f"Task {row['task']}"
                lines.append(f"- {where}: {verdict_sentence(row, level)}")
    return [
        *lines,
        "",
        *stability_sentences(summary[summary["protocol"] == protocol], shots, order),
        "",
    ]


def accuracy_lines(accuracy: pd.DataFrame) -> list[str]:
    """The accuracy table with nested bounds and the untuned prompts' accuracy."""
    acc_cols = ["protocol", "task", "shots", "init", "mean", "low", "high", "interval",
                "pretrain_seeds", "fewshot_seeds", "rows", "mdd", "share_pretrain",
                "share_fewshot", "share_rows", "untuned"]  # fmt: skip
    return [
        "## Accuracy with nested bounds, and untuned",
        "",
        "`untuned`: the initial prompt's test accuracy with no tuning (mean over "
        "pre-training seeds), beside the tuned mean.",
        "",
        markdown_table(accuracy[acc_cols], ["mean", "low", "high", "mdd", "share_pretrain",
                                            "share_fewshot", "share_rows", "untuned"]),
    ]  # fmt: skip


def evidence_table_lines(evidence: pd.DataFrame) -> list[str]:
    """The table of nested paired differences (method - baseline)."""
    ev_cols = ["protocol", "task", "shots", "method", "baseline", "mean_diff", "low", "high",
               "interval", "pretrain_seeds", "fewshot_seeds", "rows", "mdd",
               "share_pretrain", "share_fewshot", "share_rows", "mcnemar_wins",
               "mcnemar_losses", "cells", "verdict"]  # fmt: skip
    return [
        "## Paired differences, nested (method - baseline)",
        "",
        markdown_table(evidence[ev_cols], ["mean_diff", "low", "high", "mdd",
                                           "share_pretrain", "share_fewshot", "share_rows"]),
    ]  # fmt: skip


def summary_lines(summary: pd.DataFrame, zero_shot: Mapping[str, float]) -> list[str]:
    """The summary table over units, with the zero-shot accuracy beside each row."""
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
    return ["## Summary over units (pre-training seed, few-shot seed)", "",
            markdown_table(shown[columns], percent)]  # fmt: skip


def comparison_table_lines(comparisons: pd.DataFrame) -> list[str]:
    """The table of unit-level paired comparisons (none: no lines)."""
    if comparisons.empty:
        return []
    comp_cols = ["protocol", "task", "shots", "method", "baseline", "metric", "n", "mean_diff", "ci_low",
                 "ci_high", "wins", "ties", "losses", "t_pvalue", "wilcoxon_pvalue"]  # fmt: skip
    return ["## Paired comparisons over units (method - baseline)", "",
            markdown_table(comparisons[comp_cols], ["mean_diff", "ci_low", "ci_high"])]  # fmt: skip


def zero_shot_lines(zero_shot: Mapping[str, float]) -> list[str]:
    """The backbone's zero-shot accuracy per task (none: no lines)."""
    if not zero_shot:
        return []
    lines = ["## Zero-shot reference (no prompt)", ""]
    lines += [f"- {t}: {points(v)}% accuracy" for t, v in sorted(zero_shot.items())]
    lines.append("")
    return lines


def failed_lines(failed: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cells left out of every statistic, with their errors (none: no lines)."""
    if not failed:
        return []
    lines = ["## Failed cells (left out of every statistic)", ""]
    lines += [f"- {f.get('cell_id', '?')}: {f.get('error', 'no result')}" for f in failed]
    lines.append("")
    return lines


def plot_lines(plots: Sequence[str]) -> list[str]:
    """The plots, less the forests (those stand by their verdicts); none: no lines."""
    if not plots:
        return []
    shown = [p for p in plots if not p.startswith("forest_")]
    return ["## Plots", ""] + [f"![{p}]({p})" for p in shown] + [""]
