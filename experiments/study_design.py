"""The minimum detectable difference (MDD) of a study design, predicted from a report's variance.

    .venv/bin/python experiments/study_design.py docs/results/evidence.csv \
        --method metapt_maml --baseline ppt --design 3x5x100 --design 5x10x100

A report's ``evidence.csv`` gives, per task, the paired comparison's standard error, its design
(P pre-training seeds x F few-shot seeds x R test rows) and the shares of the three variance
components (:func:`metapt_core.report.nested.variance_components`). With

    SE^2 = s2_p / P + s2_f / (P F) + s2_r / (P F R),   s2_level = share_level * T,

each task's total T follows from its SE and shares; a new design's SE is then the same sum at
the new (P, F, R), the average over tasks has ``SE = sqrt(sum_t SE_t^2) / n_tasks`` (as the
report computes it) and ``MDD = 2.80 SE`` (two-sided 5% level, 80% power, normal
approximation). The estimate is as good as the components it starts from: with 2 or 3
pre-training seeds the between-seed variance is itself poorly known.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from metapt_core.report.evidence import mdd_z


def components(row: pd.Series) -> tuple[float, float, float]:
    """``(s2_p, s2_f, s2_r)`` of one task's comparison row, in accuracy points squared."""
    p, f, r = int(row["pretrain_seeds"]), int(row["fewshot_seeds"]), int(row["rows"])
    shares = [float(row[k]) for k in ("share_pretrain", "share_fewshot", "share_rows")]
    per_unit = shares[0] / p + shares[1] / (p * f) + shares[2] / (p * f * r)
    total = (100 * float(row["se"])) ** 2 / per_unit
    return shares[0] * total, shares[1] * total, shares[2] * total


def standard_error(parts: tuple[float, float, float], p: int, f: int, r: int) -> float:
    """``sqrt(s2_p / P + s2_f / (P F) + s2_r / (P F R))``."""
    return math.sqrt(parts[0] / p + parts[1] / (p * f) + parts[2] / (p * f * r))


def parse_design(text: str) -> tuple[int, int, int]:
    """``"3x5x100"`` -> (3 pre-training seeds, 5 few-shot seeds, 100 test rows per task)."""
    try:
        p, f, r = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"design must be PxFxR, got {text!r}") from error
    return p, f, r


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("evidence", type=Path)
    parser.add_argument("--method", default="metapt_maml")
    parser.add_argument("--baseline", default="ppt")
    parser.add_argument("--protocol", default="fewshot")
    parser.add_argument("--design", type=parse_design, action="append", required=True)
    args = parser.parse_args()
    frame = pd.read_csv(args.evidence)
    rows = frame[
        (frame["method"] == args.method)
        & (frame["baseline"] == args.baseline)
        & (frame["protocol"] == args.protocol)
        & (frame["task"] != "AVERAGE")
    ]
    if rows.empty:
        raise SystemExit(f"{args.evidence}: no {args.method} vs {args.baseline} rows")
    z = mdd_z(0.95)
    parts = {str(row["task"]): components(row) for _, row in rows.iterrows()}
    first = rows.iloc[0]
    print(f"{args.method} - {args.baseline}, components from {args.evidence} "
          f"({first['pretrain_seeds']} x {first['fewshot_seeds']} x {first['rows']} per task), "
          "points^2:")  # fmt: skip
    for task, (sp, sf, sr) in parts.items():
        print(f"  {task}: pre-training {sp:.1f}, few-shot {sf:.1f}, test rows {sr:.0f}")
    print("design (P x F x R per task): MDD per task; MDD of the average over tasks")
    for p, f, r in args.design:
        ses = {task: standard_error(c, p, f, r) for task, c in parts.items()}
        average = math.sqrt(sum(se**2 for se in ses.values())) / len(ses)
        per_task = ", ".join(f"{task} {z * se:.1f}" for task, se in ses.items())
        print(f"  {p} x {f} x {r}: {per_task}; average {z * average:.1f} points")


if __name__ == "__main__":
    main()
