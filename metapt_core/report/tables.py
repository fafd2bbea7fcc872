"""Result tables: per-cell results, per (task, shots, init) summaries, paired comparisons.

Scores are fractions in [0, 1] in the frames and CSV files; Markdown shows percentage points.
A *unit* is one (pre-training seed, few-shot seed) pair: the tables here summarise over units,
per protocol (the nested statistics over seeds and test rows are
:mod:`metapt_core.report.evidence`). The row ``task == "AVERAGE"`` aggregates over tasks: per
unit, the mean over tasks, then the same statistics over units; its ``stability`` is the mean
over tasks of the per-task std across units.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from metapt_core.config import GridConfig, InitMethod
from metapt_core.errors import DataError
from metapt_core.report.stats import bootstrap_ci, mean_std, paired_comparison
from metapt_core.specs import ReportGrid

AVERAGE = "AVERAGE"
METRICS = {"accuracy": "test_accuracy", "macro_f1": "test_macro_f1"}
CELL_KEY = ["task", "init", "shots", "seed", "pretrain_seed", "protocol"]
RESULT_COLUMNS = [
    "cell_id", "task", "init", "shots", "seed", "pretrain_seed", "protocol", "split_seed",
    "train_seed", "split_id",
    "test_accuracy", "test_macro_f1", "n_test", "n_train", "n_dev", "dev_accuracy",
    "dev_macro_f1", "best_step", "wall_seconds", "group_size", "test_correct",
]  # fmt: skip


def stable_seed(*parts: Any) -> int:
    """A bootstrap seed from a row's key, so each interval is reproducible on its own."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def results_frame(cell_results: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished cell (nested fields such as ``history`` dropped), sorted.

    Raises:
        DataError: a row misses a required field, or a cell appears twice.
    """
    frame = pd.DataFrame([{k: r.get(k) for k in RESULT_COLUMNS if k in r} for r in cell_results])
    for column in ("task", "init", "shots", "seed", "test_accuracy", "test_macro_f1"):
        if column not in frame.columns:
            raise DataError("cell_results", column, "field missing from the cell results")
    if "split_id" not in frame.columns:
        frame["split_id"] = ""
    if "pretrain_seed" not in frame.columns:
        frame["pretrain_seed"] = 0
    if "protocol" not in frame.columns:
        frame["protocol"] = "fewshot"
    frame["pretrain_seed"] = frame["pretrain_seed"].fillna(0).astype(int)
    frame["protocol"] = frame["protocol"].fillna("fewshot").astype(str)
    if frame.duplicated(CELL_KEY).any():
        dup = frame[frame.duplicated(CELL_KEY)].iloc[0]
        raise DataError(
            "cell_results",
            f"{dup['task']}/{dup['init']}/k{dup['shots']}/s{dup['seed']}/p{dup['pretrain_seed']}"
            f"/{dup['protocol']}",
            "cell reported twice",
        )
    frame["test_accuracy"] = frame["test_accuracy"].astype(float)
    frame["test_macro_f1"] = frame["test_macro_f1"].astype(float)
    frame["unit"] = [
        f"p{p}s{s}" for p, s in zip(frame["pretrain_seed"], frame["seed"], strict=True)
    ]
    order = ["protocol", "task", "shots", "init", "pretrain_seed", "seed"]
    return frame.sort_values(order, kind="stable").reset_index(drop=True)


def init_order(frame: pd.DataFrame, grid: ReportGrid | GridConfig) -> list[str]:
    """Initialisations present, in the configured order, unknown ones last."""
    present = list(dict.fromkeys(frame["init"]))
    configured = [m.value for m in grid.inits if m.value in present]
    return configured + sorted(p for p in present if p not in configured)


def protocols(frame: pd.DataFrame) -> list[str]:
    """The protocols present, the configured few-shot tuning first."""
    present = list(dict.fromkeys(frame["protocol"])) if "protocol" in frame.columns else []
    return sorted(present, key=lambda p: (p != "fewshot", p)) or ["fewshot"]


def seed_average(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (protocol, shots, init, unit): scores averaged over the tasks that all have it."""
    n_tasks = frame["task"].nunique()
    keys = ["protocol", "shots", "init", "unit"]
    grouped = frame.groupby(keys, sort=True)
    out = grouped[list(METRICS.values())].mean()
    out["n_tasks"] = grouped["task"].nunique()
    out = out[out["n_tasks"] == n_tasks].drop(columns="n_tasks").reset_index()
    out["task"] = AVERAGE
    # the split of an average is the set of its tasks' splits
    ids = grouped["split_id"].apply(lambda s: "+".join(sorted(map(str, s)))).reset_index()
    return out.merge(ids, on=keys, how="left")


def _stats_row(
    values: np.ndarray, grid: ReportGrid | GridConfig, key: tuple[Any, ...]
) -> dict[str, float]:
    mean, std = mean_std(values)
    low, high = bootstrap_ci(values, grid.bootstrap, grid.ci_level, stable_seed(*key))
    return {"mean": mean, "std": std, "ci_low": low, "ci_high": high}


def summary_table(frame: pd.DataFrame, grid: ReportGrid | GridConfig) -> pd.DataFrame:
    """Per (protocol, task, shots, init), and AVERAGE over tasks: mean, std and the bootstrap
    bounds over units (a range below 5 units: :func:`metapt_core.report.nested.interval_name`).

    Columns: protocol, task, shots, init, n_seeds (units), then for m in (accuracy, macro_f1):
    ``m_mean``, ``m_std``, ``m_ci_low``, ``m_ci_high``, ``m_stability`` (the std for a task;
    for AVERAGE the mean over tasks of the per-task std).
    """
    order = init_order(frame, grid)
    rows: list[dict[str, Any]] = []
    tasks = sorted(frame["task"].unique())
    averaged = seed_average(frame)
    for protocol in protocols(frame):
        for shots in sorted(frame["shots"].unique()):
            for task in [*tasks, AVERAGE]:
                source = averaged if task == AVERAGE else frame[frame["task"] == task]
                for init in order:
                    part = source[
                        (source["protocol"] == protocol)
                        & (source["shots"] == shots)
                        & (source["init"] == init)
                    ]
                    if part.empty:
                        continue
                    row: dict[str, Any] = {
                        "protocol": protocol,
                        "task": task,
                        "shots": int(shots),
                        "init": init,
                        "n_seeds": len(part),
                    }
                    for metric, column in METRICS.items():
                        values = part.sort_values("unit")[column].to_numpy(dtype=float)
                        key = (task, shots, init, metric) if protocol == "fewshot" else (
                            protocol, task, shots, init, metric)  # fmt: skip
                        stats = _stats_row(values, grid, key)
                        row.update({f"{metric}_{k}": v for k, v in stats.items()})
                        row[f"{metric}_stability"] = stats["std"]
                    rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    for protocol, shots, init in (
        table[["protocol", "shots", "init"]].drop_duplicates().itertuples(index=False)
    ):
        same = (table["protocol"] == protocol) & (table["shots"] == shots) & (table["init"] == init)
        per_task = table[same & (table["task"] != AVERAGE)]
        mask = same & (table["task"] == AVERAGE)
        for metric in METRICS:
            stds = per_task[f"{metric}_std"].to_numpy(dtype=float)
            value = float(np.mean(stds)) if stds.size and not np.isnan(stds).all() else math.nan
            table.loc[mask, f"{metric}_stability"] = value
    return table


def metapt_methods(order: Sequence[str]) -> list[str]:
    """The MetaPT initialisations among ``order``."""
    return [
        m
        for m in order
        if m in InitMethod._value2member_map_ and InitMethod(m).meta_algorithm is not None
    ]


def comparisons_table(frame: pd.DataFrame, grid: ReportGrid | GridConfig) -> pd.DataFrame:
    """Each MetaPT init against every other init, paired on unit, per (protocol, task, shots)
    and AVERAGE.

    Pairs are the units (pre-training seed, few-shot seed) both inits finished; their
    ``split_id`` must agree (same rows), else the pairing would be unfair and a DataError is
    raised.

    Columns: protocol, task, shots, method, baseline, metric, n, mean_diff, ci_low, ci_high,
    wins, ties, losses, t_pvalue, wilcoxon_pvalue (differences are ``method - baseline``).
    """
    order = init_order(frame, grid)
    rows: list[dict[str, Any]] = []
    averaged = seed_average(frame)
    tasks = sorted(frame["task"].unique())
    for protocol, shots, task in [
        (pr, sh, ta)
        for pr in protocols(frame)
        for sh in sorted(frame["shots"].unique())
        for ta in [*tasks, AVERAGE]
    ]:
        source = averaged if task == AVERAGE else frame[frame["task"] == task]
        source = source[(source["shots"] == shots) & (source["protocol"] == protocol)]
        for method in metapt_methods(order):
            for baseline in order:
                if baseline == method:
                    continue
                a = source[source["init"] == method].set_index("unit")
                b = source[source["init"] == baseline].set_index("unit")
                seeds = sorted(set(a.index) & set(b.index))
                if not seeds:
                    continue
                mismatch = [
                    s for s in seeds if str(a.at[s, "split_id"]) != str(b.at[s, "split_id"])
                ]
                if mismatch:
                    raise DataError(
                        "cell_results",
                        f"{task}/k{shots}/{mismatch[0]}",
                        f"{method} and {baseline} were trained on different splits",
                    )
                for metric, column in METRICS.items():
                    cmp = paired_comparison(
                        a.loc[seeds, column].to_numpy(dtype=float),
                        b.loc[seeds, column].to_numpy(dtype=float),
                        grid.bootstrap,
                        grid.ci_level,
                        stable_seed(task, shots, method, baseline, metric)
                        if protocol == "fewshot"
                        else stable_seed(protocol, task, shots, method, baseline, metric),
                    )
                    rows.append({"protocol": protocol, "task": task, "shots": int(shots),
                                 "method": method, "baseline": baseline, "metric": metric,
                                 **cmp.to_dict()})  # fmt: skip
    return pd.DataFrame(rows)


def _cell(value: Any, percent: bool) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return "n/a"
        return f"{100 * value:.1f}" if percent else f"{value:.3g}"
    return str(value)


def markdown_table(frame: pd.DataFrame, percent_columns: Sequence[str] = ()) -> str:
    """A GitHub Markdown table; ``percent_columns`` are shown x100 with one decimal."""
    if frame.empty:
        return "_(no rows)_\n"
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    lines = [header, rule]
    for _, row in frame.iterrows():
        cells = [_cell(row[c], c in percent_columns).replace("|", "\\|") for c in frame.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
