"""Report figures (matplotlib, Agg backend): per-task bars and per-seed distributions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from metapt_core.store import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _zero_line(ax: plt.Axes, x0: float, x1: float, value: float | None, labelled: bool) -> bool:
    if value is None or not np.isfinite(value):
        return labelled
    # matplotlib leaves labels starting with "_" out of the legend: one legend entry in all
    label = "_zero-shot" if labelled else "zero-shot"
    ax.hlines(100 * value, x0, x1, colors="black", linestyles="dashed", linewidth=1.2, label=label)
    return True


def bar_plot(
    summary: pd.DataFrame,
    zero_shot: Mapping[str, float],
    shots: int,
    inits: Sequence[str],
    path: Path,
    metric: str = "accuracy",
) -> Path:
    """Grouped bars: per task (and the average), one bar per init of the mean over seeds, error
    bars of one std across seeds, and a dashed line at the backbone's zero-shot score."""
    part = summary[summary["shots"] == shots]
    tasks = list(dict.fromkeys(part["task"]))
    width = 0.8 / max(len(inits), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(tasks) * max(1, len(inits)) * 0.45, 4.2))
    labelled = False
    for i, init in enumerate(inits):
        rows = part[part["init"] == init].set_index("task")
        means = [100 * rows.at[t, f"{metric}_mean"] if t in rows.index else np.nan for t in tasks]
        stds = [100 * rows.at[t, f"{metric}_std"] if t in rows.index else np.nan for t in tasks]
        xs = np.arange(len(tasks)) - 0.4 + width * (i + 0.5)
        ax.bar(xs, means, width, yerr=np.nan_to_num(stds), capsize=3, label=init)
    for j, task in enumerate(tasks):
        labelled = _zero_line(ax, j - 0.45, j + 0.45, zero_shot.get(task), labelled)
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel(f"test {metric} (%)")
    ax.set_title(f"{metric} by task, k={shots} (mean +- std over seeds)")
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)
    return path


def seed_plot(
    results: pd.DataFrame,
    zero_shot: Mapping[str, float],
    shots: int,
    inits: Sequence[str],
    path: Path,
    metric: str = "accuracy",
) -> Path:
    """Box plots with every seed's score as a dot, per task and init: the spread across seeds."""
    column = f"test_{metric}"
    part = results[results["shots"] == shots]
    tasks = sorted(part["task"].unique())
    fig, axes = plt.subplots(
        1, len(tasks), figsize=(1.0 + 0.7 * len(inits) * len(tasks), 4.2), squeeze=False
    )
    for ax, task in zip(axes[0], tasks):
        data = [
            100 * part[(part["task"] == task) & (part["init"] == i)][column].to_numpy(float)
            for i in inits
        ]
        ax.boxplot(data, widths=0.5, showfliers=False)
        for k, values in enumerate(data):
            # evenly spread dots: deterministic, unlike random jitter
            offsets = (
                np.linspace(-0.12, 0.12, len(values)) if len(values) > 1 else np.zeros(len(values))
            )
            ax.plot(k + 1 + offsets, values, "o", markersize=4, alpha=0.8)
        _zero_line(ax, 0.5, len(inits) + 0.5, zero_shot.get(task), False)
        ax.set_xticks(np.arange(1, len(inits) + 1), inits, rotation=45, ha="right", fontsize=8)
        ax.set_title(task)
    axes[0][0].set_ylabel(f"test {metric} (%)")
    fig.suptitle(f"{metric} per seed, k={shots} (dashed: zero-shot)")
    _save(fig, path)
    return path


def forest_plot(evidence: pd.DataFrame, protocol: str, shots: int, path: Path) -> Path:
    """The verdict at a glance: each MetaPT variant minus each baseline, per task and on
    average, as a point (the mean paired difference over pre-training seeds, few-shot seeds and
    test rows) with its nested bounds, a grey band of +-MDD around 0 (differences this design
    cannot tell from none) and a line at 0. Points whose bounds exclude 0 are filled."""
    part = evidence[(evidence["protocol"] == protocol) & (evidence["shots"] == shots)]
    pairs = list(dict.fromkeys(zip(part["method"], part["baseline"], strict=True)))
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.3 * len(part)))
    labels: list[str] = []
    positions: list[float] = []
    y = 0.0
    for m, (method, baseline) in enumerate(pairs):
        color = f"C{m % 10}"
        rows = part[(part["method"] == method) & (part["baseline"] == baseline)]
        for row in rows.to_dict("records"):
            mean, low, high = (100 * float(row[c]) for c in ("mean_diff", "low", "high"))
            filled = low > 0 or high < 0
            average = row["task"] == "AVERAGE"
            ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=color,
                        mfc=color if filled else "white", capsize=3,
                        markersize=7 if average else 4)  # fmt: skip
            labels.append(f"{method} - {baseline}: {row['task']}")
            positions.append(y)
            y += 1.0
        y += 0.5  # a gap between comparisons
    mdd = 100 * float(part["mdd"].max()) if not part.empty else 0.0
    ax.axvspan(-mdd, mdd, color="0.9", zorder=0, label=f"+-largest MDD ({mdd:.1f} points)")
    ax.axvline(0, color="black", linewidth=1)
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    interval = str(part["interval"].iloc[0]) if not part.empty else "bounds"
    ax.set_xlabel(f"paired difference in test accuracy, points ({interval})")
    ax.set_title(f"MetaPT minus each baseline, k={shots}, {protocol} (filled: bounds exclude 0)")
    ax.legend(fontsize=7, loc="best")
    _save(fig, path)
    return path


PRETRAINING_CURVES = (
    ("query_loss", "meta-train query loss after adaptation (MetaPT) / train loss (PPT)"),
    ("unseen_loss", "held-out clusters: query loss after the inner step"),
    ("val_loss", "held-out rows of training clusters: query loss after the inner step"),
)


def pretraining_plot(histories: Mapping[str, Sequence[Mapping[str, float]]], path: Path) -> Path:
    """Pre-training curves of every prompt (``name -> history.json`` entries), one panel per
    quantity of :data:`PRETRAINING_CURVES`, one line per prompt (PPT's train loss stands in
    for the query loss, which it does not have)."""
    fig, axes = plt.subplots(1, len(PRETRAINING_CURVES), figsize=(15, 4.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], PRETRAINING_CURVES, strict=True):
        for i, (name, history) in enumerate(sorted(histories.items())):
            column = key if any(key in h for h in history) or key != "query_loss" else "loss"
            points = [(h["step"], h[column]) for h in history
                      if column in h and np.isfinite(h[column])]  # fmt: skip
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, marker="o" if len(points) < 15 else None,
                        markersize=3, color=f"C{i % 10}", label=name)  # fmt: skip
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("cross-entropy (nats)")
    labelled: dict[str, Any] = {}
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labelled.setdefault(label, handle)
    if labelled:
        axes[0][-1].legend(list(labelled.values()), list(labelled), fontsize=7,
                           loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    fig.suptitle("Pre-training curves (history.json of each prompt)")
    _save(fig, path)
    return path


def interval_bar_plot(
    accuracy: pd.DataFrame,
    zero_shot: Mapping[str, float],
    protocol: str,
    shots: int,
    inits: Sequence[str],
    path: Path,
) -> Path:
    """Grouped bars of mean test accuracy per task (and the average) and init, with the nested
    bounds of ``accuracy`` (:func:`metapt_core.report.evidence.accuracy_table`) as error bars,
    the untuned accuracy as a hollow marker, and a dashed line at the zero-shot score."""
    part = accuracy[(accuracy["protocol"] == protocol) & (accuracy["shots"] == shots)]
    tasks = list(dict.fromkeys(part["task"]))
    width = 0.8 / max(len(inits), 1)
    fig, ax = plt.subplots(figsize=(1.6 + 0.5 * len(tasks) * max(1, len(inits)), 4.2))
    labelled = False
    for i, init in enumerate(inits):
        rows = part[part["init"] == init].set_index("task")
        xs = np.arange(len(tasks)) - 0.4 + width * (i + 0.5)
        mean = np.array([100 * rows.at[t, "mean"] if t in rows.index else np.nan for t in tasks])
        low = np.array([100 * rows.at[t, "low"] if t in rows.index else np.nan for t in tasks])
        high = np.array([100 * rows.at[t, "high"] if t in rows.index else np.nan for t in tasks])
        err = np.nan_to_num(np.vstack([mean - low, high - mean]))
        ax.bar(xs, mean, width, yerr=err, capsize=3, label=init, color=f"C{i % 10}")
        if "untuned" in rows.columns:
            untuned = [100 * rows.at[t, "untuned"] if t in rows.index else np.nan for t in tasks]
            ax.plot(xs, untuned, "o", mfc="white", mec="black", markersize=4,
                    label="_untuned" if i else "untuned")  # fmt: skip
    for j, task in enumerate(tasks):
        labelled = _zero_line(ax, j - 0.45, j + 0.45, zero_shot.get(task), labelled)
    interval = str(part["interval"].iloc[0]) if not part.empty else "bounds"
    ax.set_xticks(np.arange(len(tasks)), tasks)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"accuracy by task, k={shots}, {protocol} (nested {interval})")
    ax.legend(fontsize=8, ncols=2)
    _save(fig, path)
    return path
