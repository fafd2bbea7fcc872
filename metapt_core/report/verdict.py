"""The verdict in words: sentences generated from the paired comparisons and the summary table.

Nothing in them is written by hand; :mod:`metapt_core.report.markdown` places them in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from metapt_core.report.nested import interval_name
from metapt_core.report.tables import AVERAGE, metapt_methods

BASELINES = ("random", "ppt")  # the comparisons the verdict states in words (when present)
CONTROLS = ("sample_vocab", "label_words", "text", "ppt_balanced")  # stated too, when present


def points(value: float, signed: bool = False) -> str:
    """``value`` (a fraction) in percentage points, one decimal; ``n/a`` when not finite."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def _p(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3g}"


def verdict_sentence(row: Mapping[str, Any], level: float) -> str:
    """One plain sentence on a unit-level paired comparison row (``method - baseline``,
    accuracy), for cells without per-row scores; bounds over fewer than 5 units are a range."""
    name = interval_name((int(row["n"]),), level)
    ci = f"{name} [{points(row['ci_low'], True)}, {points(row['ci_high'], True)}]"
    counts = (
        f"{row['wins']} wins / {row['ties']} ties / {row['losses']} losses over {row['n']} units; "
        f"paired t p={_p(row['t_pvalue'])}, Wilcoxon p={_p(row['wilcoxon_pvalue'])}"
    )
    diff = row["mean_diff"]
    who, base = row["method"], row["baseline"]
    if not math.isfinite(diff):
        return f"{who} vs {base}: no paired seeds."
    if diff > 0 and row["ci_low"] > 0 and name == "range":
        head = f"**{who} is ahead of {base}** by {points(diff, True)} points ({ci}, excludes 0)"
    elif diff > 0 and row["ci_low"] > 0:
        head = f"**{who} beats {base}** by {points(diff, True)} accuracy points ({ci}, excludes 0)"
    elif diff > 0:
        head = (
            f"**{who} is ahead of {base} on average but not clearly**: {points(diff, True)} points "
            f"({ci}, includes 0)"
        )
    elif diff == 0:
        head = f"**{who} ties {base}**: {points(diff, True)} points ({ci})"
    else:
        clear = "excludes 0" if row["ci_high"] < 0 else "includes 0"
        head = f"**{who} does not beat {base}**: {points(diff, True)} points ({ci}, {clear})"
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
    bounds = f"{row['interval']} [{points(row['low'], True)}, {points(row['high'], True)}]"
    if row["interval"] == "range":
        bounds += f" (fewer than 5 seeds at a level: not a {int(round(100 * level))}% interval)"
    shares = (
        f"variance from pre-training seeds {_share(row['share_pretrain'])}, few-shot seeds "
        f"{_share(row['share_fewshot'])}, test rows {_share(row['share_rows'])}"
    )
    return (
        f"{row['method']} vs {row['baseline']}: **{row['verdict']}**, "
        f"{points(row['mean_diff'], True)} points, {bounds}; design {design_text(row)}; "
        f"minimum detectable difference {points(row['mdd'])} points; {shares}; McNemar per cell: "
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
                    f"{method} vs {base}: {row['verdict']} ({points(row['mean_diff'], True)} "
                    f"points, {row['interval']} [{points(row['low'], True)}, "
                    f"{points(row['high'], True)}], MDD {points(row['mdd'])})"
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
    listing = ", ".join(f"{i} {points(v)}" for i, v in spread.items())
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
                    f"{method} is {word} {base} ({points(spread[method])} vs {points(spread[base])} points)."
                )
    return out
