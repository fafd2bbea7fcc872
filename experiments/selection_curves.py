"""Every validation of the stored PPT and MetaPT prompts on the held-out clusters, as one CSV.

    python experiments/selection_curves.py .metapt --out selection.csv

Reads each stored ``ppt`` and ``meta-pretrain`` computation under ``<work_dir>/artifacts`` (its
``record.json`` for the settings, ``history.json`` for the curve) and writes one row per
validated step: ``meta_steps``, ``stage`` (``ppt``, ``ppt_balanced``, ``meta-pretrain``),
``pretrain_seed``, ``step``, ``unseen_loss`` (the held-out clusters' loss after the inner rule),
``unseen_loss_0`` (before it), ``val_loss`` (the seen clusters'), ``kept`` (the step whose prompt
the stage kept), and ``machine`` (the CPU that computed it, where the record says). This is the
curve the prompt was chosen on (meta-validation); nothing in it is a test row.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = (
    "meta_steps",
    "stage",
    "pretrain_seed",
    "step",
    "unseen_loss",
    "unseen_loss_0",
    "val_loss",
    "kept",
    "machine",
)


def curve_rows(folder: Path, stage: str) -> list[dict[str, Any]]:
    """The validated steps of one stored computation ``folder`` of store stage ``stage``."""
    record = json.loads((folder / "record.json").read_text("utf-8"))
    settings = record["settings"]
    meta = settings["meta"]
    name = stage
    if stage == "ppt" and settings.get("balanced"):
        name = "ppt_balanced"
    histories = sorted((folder / "out").rglob("history.json"))
    if not histories:
        return []
    rows = []
    for entry in json.loads(histories[0].read_text("utf-8")):
        if "unseen_loss" not in entry and "val_loss" not in entry:
            continue
        rows.append(
            {
                "meta_steps": meta["meta_steps"],
                "stage": name,
                "pretrain_seed": meta["seed"],
                "step": entry["step"],
                "unseen_loss": round(entry["unseen_loss"], 4) if "unseen_loss" in entry else "",
                "unseen_loss_0": round(entry["unseen_loss_0"], 4)
                if "unseen_loss_0" in entry
                else "",
                "val_loss": round(entry["val_loss"], 4) if "val_loss" in entry else "",
                "kept": bool(entry.get("kept", False)),
                "machine": record.get("machine", ""),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = []
    for stage in ("meta-pretrain", "ppt"):
        for record in sorted((args.work_dir / "artifacts" / stage).glob("*/record.json")):
            rows.extend(curve_rows(record.parent, stage))
    if not rows:
        print(f"error: work_dir={str(args.work_dir)!r}: no stored ppt or meta-pretrain prompt")
        return 2
    rows.sort(key=lambda r: (r["meta_steps"], r["stage"], r["pretrain_seed"], r["step"]))
    with open(args.out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
