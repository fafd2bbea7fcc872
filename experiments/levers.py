"""Lever study: what each meta-training setting does to MetaPT on the lever base configuration.

A lever is one pipeline run (``metapt run``, so every number is an MLflow run and every stage is
cached) with ``grid.inits`` reduced to the one MetaPT variant and some settings overridden. The
baselines (random, sampled vocabulary, PPT) are not retrained: they come from a reference run of
the same profile, and a lever's cells are paired with them on (task, shots, seed) by the report's
own comparison (``metapt_core.report.tables.comparisons_table``), which refuses a pair trained on
different splits. The few-shot split and minibatch order do not depend on the initialisation, so
this pairing is the one the grid itself makes.

    python experiments/levers.py run --only fomaml           # run levers (skips finished ones)
    python experiments/levers.py table --reference RUN_ID    # the comparison table (Markdown)
    python experiments/levers.py adopt --only NAME           # record a run whose driver was stopped

Runs are recorded in ``<work_dir>/levers.json`` (lever name -> MLflow run id).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Lever:
    """One setting to try: a name, the MetaPT variant it trains, and its overrides."""

    name: str
    init: str
    overrides: tuple[str, ...] = ()
    what: str = ""
    own_baselines: bool = False  # run random and PPT too (a lever that changes their protocol)

    @property
    def inits(self) -> list[str]:
        return ["random", "ppt", self.init] if self.own_baselines else [self.init]


BASE_001 = "meta.outer_lr=0.01"
LEVERS = [
    # one at a time around the default profile's MetaPT
    Lever("maml", "metapt_maml", (), "the study profile's MetaPT (MAML, k-means k=8, 30 steps)"),
    Lever("fomaml", "metapt_fomaml", (), "first-order MAML instead of MAML"),
    Lever("outer_lr_0.01", "metapt_maml", (BASE_001,), "outer Adam lr 0.03 -> 0.01"),
    Lever("auto_k", "metapt_maml", ("cluster.n_clusters=0",), "k chosen by silhouette (k=0)"),
    Lever(
        "meta_seed_1",
        "metapt_maml",
        ("meta.seed=1",),
        "the same settings, another meta-training seed (initial prompt and episodes)",
    ),
    Lever(
        "sgd_fewshot",
        "metapt_maml",
        ("fewshot.optimizer=sgd", "fewshot.lr=0.3"),
        "few-shot tuning of every init by SGD at 0.3 (MetaPT's inner update) instead of Adam",
        own_baselines=True,
    ),
    # one at a time around outer lr 0.01 (the first lever that removed the collapse)
    Lever(
        "0.01+umap_hdbscan",
        "metapt_maml",
        (BASE_001, "cluster.method=umap_hdbscan", "cluster.n_clusters=0"),
        "outer lr 0.01, UMAP + HDBSCAN clusters instead of k-means",
    ),
    Lever("0.01+k_3", "metapt_maml", (BASE_001, "cluster.n_clusters=3"), "outer lr 0.01, k=3"),
    Lever(
        "0.01+inner_lr_3",
        "metapt_maml",
        (BASE_001, "meta.inner_lr=3.0"),
        "outer lr 0.01, inner SGD lr 0.3 -> 3.0",
    ),
    Lever(
        "0.01+inner_lr_0.03",
        "metapt_maml",
        (BASE_001, "meta.inner_lr=0.03"),
        "outer lr 0.01, inner SGD lr 0.3 -> 0.03",
    ),
    Lever(
        "0.01+inner_steps_3",
        "metapt_maml",
        (BASE_001, "meta.inner_steps=3"),
        "outer lr 0.01, 3 inner steps instead of 1",
    ),
    Lever(
        "0.01+meta_steps_60",
        "metapt_maml",
        (BASE_001, "meta.meta_steps=60"),
        "outer lr 0.01, 60 outer steps instead of 30",
    ),
    Lever("0.01+fomaml", "metapt_fomaml", (BASE_001,), "outer lr 0.01, first-order MAML"),
]
BY_NAME = {lever.name: lever for lever in LEVERS}


def record_path(work_dir: Path) -> Path:
    return work_dir / "levers.json"


def load_record(work_dir: Path) -> dict[str, Any]:
    path = record_path(work_dir)
    return json.loads(path.read_text("utf-8")) if path.is_file() else {}


def save_record(work_dir: Path, record: dict[str, Any]) -> None:
    path = record_path(work_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True), "utf-8")
    tmp.replace(path)


BASE_CONFIG = ROOT / "experiments" / "levers_base.yaml"
# `metapt run` runs in ROOT, so the base config's relative work folder is ROOT/.metapt
RUN_STORE = (f"work_dir={ROOT / '.metapt'}",)


def lever_overrides(lever: Lever) -> list[str]:
    """The ``--set`` settings of a lever's run (its pipeline run's ``metapt.overrides`` tag)."""
    return [f"grid.inits=[{','.join(lever.inits)}]", *lever.overrides]


def find_lever_run(
    lever: Lever, profile: str, since_ms: int = 0, settings: Sequence[str] = ()
) -> str:
    """The newest finished pipeline run of ``lever``, found by an MLflow query on its tags
    (profile and overrides), started at or after ``since_ms``; ``""`` when there is none.
    ``settings`` locate the tracking store (e.g. ``work_dir=...``)."""
    from flows.context import resolve_config
    from tasks.tracking import KIND_TAG, Tracker

    tracker = Tracker.open(resolve_config(profile, str(BASE_CONFIG), list(settings)))
    overrides = " ".join(lever_overrides(lever)).replace("'", "\\'")
    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{KIND_TAG}` = 'pipeline' and tags.`metapt.profile` = '{profile}' "
        f"and tags.`metapt.overrides` = '{overrides}' and attributes.status = 'FINISHED' "
        f"and attributes.start_time >= {int(since_ms)}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return str(runs[0].info.run_id) if runs else ""


def run_lever(lever: Lever, profile: str, work_dir: Path, log_dir: Path) -> dict[str, Any]:
    """Run one lever through ``metapt run``; its MLflow run id, wall seconds and log file."""
    command = [sys.executable, "-m", "flows.cli", "run", "--profile", profile,
               "--config", str(BASE_CONFIG)]  # fmt: skip
    for override in lever_overrides(lever):
        command += ["--set", override]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / f"{lever.name}.log"
    started = time.perf_counter()
    since_ms = int(time.time() * 1000)
    print(f"lever {lever.name}: {' '.join(command[3:])} (log {log_file})", flush=True)
    with open(log_file, "w", encoding="utf-8") as handle:
        code = subprocess.call(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    run_id = find_lever_run(lever, profile, since_ms, RUN_STORE) if code == 0 else ""
    if not run_id:
        raise SystemExit(f"lever {lever.name}: metapt run failed (exit {code}); see {log_file}")
    print(f"lever {lever.name}: done in {seconds:.0f} s, MLflow run {run_id}", flush=True)
    return {"run_id": run_id, "seconds": round(seconds, 1), "overrides": list(lever.overrides)}


# ------------------------------------------------------------------------------ the table


def run_results(tracker: Any, run_id: str) -> Any:
    """The ``results.csv`` frame of a pipeline run (from its MLflow artifacts)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        local = tracker.client.download_artifacts(run_id, "results", tmp)
        files = sorted(Path(local).rglob("results.csv"))
        if not files:
            raise SystemExit(f"run {run_id}: no results.csv among its artifacts")
        return pd.read_csv(files[0])


def meta_metrics(tracker: Any, run_id: str) -> dict[str, float]:
    """Validation figures of the run's meta-pretrain stage (first and last validation)."""
    from tasks.tracking import PARENT_TAG, STAGE_TAG

    runs = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{PARENT_TAG}` = '{run_id}' and tags.`{STAGE_TAG}` = 'meta-pretrain'",
    )
    out: dict[str, float] = {}
    for run in runs:
        for key in ("initial_val_loss", "final_val_loss", "final_val_loss_0", "seconds"):
            if key in run.data.metrics:
                out[key] = run.data.metrics[key]
    return out


def lever_table(reference_run: str, record: dict[str, Any], profile: str) -> str:
    """One Markdown row per lever: average accuracy and paired differences with intervals."""
    import numpy as np
    import pandas as pd

    from flows.context import resolve_config
    from metapt_core.report.stats import mean_std
    from metapt_core.report.tables import AVERAGE, comparisons_table
    from tasks.tracking import Tracker

    cfg = resolve_config(profile, str(BASE_CONFIG), [])
    tracker = Tracker.open(cfg)
    reference = run_results(tracker, reference_run)
    lines = [
        "| lever | what changed | avg acc (std) | vs random [range] | W/L | vs PPT [range] | "
        "W/L | meta val loss first -> last | meta s | MLflow run |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # the reference run's own MetaPT cells are the "maml" lever unless it was run on its own
    entries = {
        k: v for k, v in {"maml": {"run_id": reference_run}, **record}.items() if k in BY_NAME
    }
    order = [lever.name for lever in LEVERS]
    for name, entry in sorted(entries.items(), key=lambda kv: order.index(kv[0])):
        lever = BY_NAME[name]
        run = run_results(tracker, entry["run_id"])
        frame = run[run["init"] == lever.init]
        # this lever's MetaPT cells and the baselines (its own run's, else the reference's),
        # paired by the report's own comparisons (which refuse pairs trained on other splits)
        baselines = run if lever.own_baselines else reference
        both = pd.concat([baselines[baselines["init"] != lever.init], frame], ignore_index=True)
        comparisons = comparisons_table(both, cfg.grid)
        average = comparisons[
            (comparisons["task"] == AVERAGE)
            & (comparisons["method"] == lever.init)
            & (comparisons["metric"] == "accuracy")
        ].set_index("baseline")
        per_seed = frame.groupby("seed")["test_accuracy"].mean()
        mean, std = mean_std(per_seed.to_numpy(dtype=float))
        cells = []
        for baseline in ("random", "ppt"):
            cmp = average.loc[baseline]
            cells.append(
                f"{100 * cmp.mean_diff:+.1f} [{100 * cmp.ci_low:+.1f}, {100 * cmp.ci_high:+.1f}]"
            )
            cells.append(f"{int(cmp.wins)}/{int(cmp.losses)}")
        meta = meta_metrics(tracker, entry["run_id"])
        val = (
            f"{meta['initial_val_loss']:.3f} -> {meta['final_val_loss']:.3f}"
            if "initial_val_loss" in meta and "final_val_loss" in meta
            else "n/a"
        )
        seconds = f"{meta['seconds']:.0f}" if "seconds" in meta else "n/a"
        lines.append(
            f"| {name} | {lever.what} | {100 * mean:.1f} ({100 * std:.1f}) | "
            + " | ".join(cells)
            + f" | {val} | {seconds} | `{entry['run_id'][:12]}` |"
        )
    ref_means = reference.groupby(["init", "seed"])["test_accuracy"].mean().groupby("init")
    summary = ", ".join(
        f"{init} {100 * float(np.mean(v)):.1f}"
        for init, v in ref_means
        if init in {"random", "ppt"}
    )
    return "\n".join(lines) + f"\n\nReference run `{reference_run}`: {summary}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("command", choices=["run", "adopt", "table", "list"])
    parser.add_argument("--profile", default="default", help=f"merged under {BASE_CONFIG.name}")
    parser.add_argument("--work-dir", default=".metapt")
    parser.add_argument("--only", action="append", default=[], help="lever names (repeatable)")
    parser.add_argument("--reference", default="", help="MLflow run id holding the baselines")
    parser.add_argument("--out", default="", help="also write the table to this file")
    args = parser.parse_args(argv)
    work_dir = (ROOT / args.work_dir).resolve()
    record = load_record(work_dir)
    if args.command == "list":
        for lever in LEVERS:
            done = record.get(lever.name, {}).get("run_id", "")
            inits = ",".join(lever.inits)
            print(f"{lever.name:16s} {inits:28s} {' '.join(lever.overrides):40s} {done}")
        return 0
    if args.command == "adopt":  # record levers whose run finished without its driver
        for name in args.only:
            lever = BY_NAME.get(name)
            run_id = find_lever_run(lever, args.profile, 0, RUN_STORE) if lever else ""
            if not run_id:
                raise SystemExit(f"--only={name!r}: no such lever or no finished run in MLflow")
            record = load_record(work_dir)
            record[name] = {"run_id": run_id, "overrides": list(BY_NAME[name].overrides)}
            save_record(work_dir, record)
            print(f"lever {name}: MLflow run {run_id}")
        return 0
    if args.command == "run":
        names = args.only or [lever.name for lever in LEVERS]
        for name in names:
            if name not in BY_NAME:
                raise SystemExit(f"--only={name!r}: no such lever ({', '.join(BY_NAME)})")
            if name in record:
                print(f"lever {name}: already run ({record[name]['run_id']})")
                continue
            entry = run_lever(BY_NAME[name], args.profile, work_dir, work_dir / "levers")
            record = load_record(work_dir)  # another driver may have written meanwhile
            record[name] = entry
            save_record(work_dir, record)
        return 0
    if not args.reference:
        raise SystemExit("--reference: give the MLflow run id of the reference (full grid) run")
    table = lever_table(args.reference, record, args.profile)
    print(table)
    if args.out:
        Path(args.out).write_text(table, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
