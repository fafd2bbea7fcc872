"""The outer Adam rate of MetaPT's MAML, chosen on meta-validation, then checked.

For each rate, runs the pipeline up to the meta-pretrain step (the ``metapt-meta-pretrain`` entry
flow: ingest, embed, cluster, PPT and MetaPT per pre-training seed, each seed's meta-objective
check), every stage cached in the work folder and tracked in MLflow like any run. It prints, per
rate and pre-training seed:

- the **selection loss**: the held-out-cluster validation loss after MetaPT's inner step, at the
  kept (best validated) outer step, from the prompt's ``history.json``. This is what the rate
  is chosen on: the rate with the lowest mean over pre-training seeds (meta-validation);
- the **check** (``meta_objective.csv``): MetaPT's and PPT's after-adaptation loss on the check's
  own episodes, disjoint from the validation episodes, and the verdict. The check is read
  after the choice and never chooses.

PPT reads MetaPT's optimiser (``ppt.lr`` unset), so each rate trains its own PPT.

    python experiments/outer_rate.py --rates 0.01 0.003 --profile study \\
        --set "grid.inits=[random,ppt,metapt_maml]"

Other settings go in ``--set`` too; the two-held-out-cluster levers of ``docs/results.md`` ran

    python experiments/outer_rate.py --rates 0.01 --profile study \\
        --set "grid.inits=[random,ppt,metapt_maml]" --set cluster.n_clusters=12 \\
        --set meta.val_clusters=2 --set meta.val_episodes=8 \\
        --out held_out_2_steps30.csv
    # and, seed 0 only, three times the budget:
    python experiments/outer_rate.py --rates 0.01 --profile study \\
        --set "grid.inits=[random,ppt,metapt_maml]" --set "grid.pretrain_seeds=[0]" \\
        --set cluster.n_clusters=12 --set meta.val_clusters=2 --set meta.val_episodes=8 \\
        --set meta.meta_steps=90 --set meta.val_every=10 --set meta.checkpoint_every=10 \\
        --out held_out_2_steps90.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

METAPT = "metapt_maml"


def selection_loss(prompt_dir: Path) -> tuple[float, int]:
    """``(loss, step)`` of the kept outer step in ``history.json``: the held-out clusters'
    ``unseen_loss`` (``val_loss`` when no cluster is held out), the last validated step when none
    is marked kept."""
    history = json.loads((prompt_dir / "history.json").read_text("utf-8"))
    key = "unseen_loss" if any("unseen_loss" in h for h in history) else "val_loss"
    validated = [h for h in history if key in h]
    if not validated:
        return math.nan, -1
    kept = next((h for h in validated if h.get("kept")), validated[-1])
    return float(kept[key]), int(kept["step"])


def check_rows(objective_dir: Path) -> dict[str, dict[str, str]]:
    """The meta-objective check's rows by init (``meta_objective.csv`` under the stage folder)."""
    found = sorted(objective_dir.rglob("meta_objective.csv"))
    if not found:
        return {}
    with open(found[0], newline="", encoding="utf-8") as handle:
        return {row["init"]: row for row in csv.DictReader(handle)}


def run_rate(rate: float, profile: str, settings: list[str]) -> list[dict[str, Any]]:
    """Run the steps up to meta-pretrain at outer rate ``rate``; one row per pre-training seed."""
    from flows.steps import entry_flows

    started = time.time()
    refs = entry_flows()["meta-pretrain"](
        profile=profile, overrides=[*settings, f"meta.outer_lr={rate}"]
    )
    minutes = (time.time() - started) / 60
    rows = []
    for key, ref in sorted(refs.items()):
        if not key.startswith(f"prompt:{METAPT}@"):
            continue
        seed = int(key.rsplit("@", 1)[1])
        val, step = selection_loss(Path(ref["path"]))
        check = refs.get(f"objective:{seed}")
        by_init = check_rows(Path(check["path"]).parent) if check else {}
        meta, ppt = by_init.get(METAPT, {}), by_init.get("ppt", {})
        rows.append(
            {
                "outer_lr": rate,
                "pretrain_seed": seed,
                "selection_loss": round(val, 4),
                "kept_step": step,
                "metapt_after": meta.get("loss_after", ""),
                "metapt_after_high": meta.get("after_high", ""),
                "ppt_after": ppt.get("loss_after", ""),
                "vs_ppt": meta.get("diff_vs_ppt", ""),
                "vs_ppt_high": meta.get("diff_high", ""),
                "trained": meta.get("trained", ""),
                "beats_ppt": meta.get("beats_ppt", ""),
                "minutes_all_seeds": round(minutes, 1),
                "mlflow_run_id": refs.get("mlflow_run_id", {}).get("id", ""),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", required=True)
    parser.add_argument("--profile", default="study")
    parser.add_argument("--set", dest="settings", action="append", default=[])
    parser.add_argument("--out", default="outer_rate.csv", help="rows appended here as they come")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for rate in args.rates:
        rows = run_rate(rate, args.profile, args.settings)
        new = not out.exists()
        with open(out, "a", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
        for row in rows:
            print(json.dumps(row), flush=True)
        mean = sum(r["selection_loss"] for r in rows) / len(rows)
        print(f"outer_lr {rate}: mean selection loss {mean:.4f} over {len(rows)} seeds", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
