"""Ship the study's best MetaPT and PPT prompts, chosen on meta-validation (never on test rows).

    python experiments/ship_prompts.py --profile study --report docs/results/study \
        --out prompts/smollm2-135m

For each initialisation (MetaPT-MAML, PPT) it lists the pre-training stage runs of the newest
finished pipeline run of the profile, reads each prompt's ``history.json`` and keeps the
pre-training seed whose kept prompt has the lowest validation loss on the held-out clusters
(``unseen_loss``: adaptation to tasks it never trained on); then ``metapt prompts export``
writes it with its model card (and its row of the report, for reference) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = {"metapt_maml": "meta-pretrain", "ppt": "ppt"}


def main(argv: list[str] | None = None) -> int:
    from flows.context import resolve_config
    from flows.prompts import export
    from metapt_core.prompt_card import best_validation
    from tasks.tracking import KEY_TAG, KIND_TAG, PARENT_TAG, STAGE_TAG, Tracker

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="study")
    parser.add_argument("--report", required=True, help="the profile's report folder")
    parser.add_argument("--out", required=True, help="folder that receives one folder per init")
    args = parser.parse_args(argv)
    cfg = resolve_config(args.profile, "", [])
    tracker = Tracker.open(cfg)
    # the newest run that computed or served each stage (a fully cached rerun has no children)
    found = tracker.client.search_runs(
        [tracker.experiment_id],
        f"tags.`{KIND_TAG}` = 'pipeline' and tags.`metapt.profile` = '{args.profile}' "
        "and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    found = [run for run in found if run.data.tags.get("metapt.cached") != "true"]
    if not found:
        raise SystemExit(f"--profile={args.profile!r}: no finished pipeline run in {cfg.work_path}")
    pipeline = found[0]
    stage_runs = tracker.client.search_runs(
        [tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{pipeline.info.run_id}'", max_results=5000
    )
    for init, stage in STAGES.items():
        candidates = []
        for run in stage_runs:
            name = run.info.run_name or ""
            if run.data.tags.get(STAGE_TAG) != stage or not name.startswith(
                "meta-pretrain-maml-p" if init == "metapt_maml" else "ppt-p"
            ):
                continue
            key = run.data.tags[KEY_TAG][:16]
            history = json.loads((cfg.work_path / "artifacts" / stage / key / "out" /
                                  "history.json").read_text("utf-8"))  # fmt: skip
            best = best_validation(history)
            if best is not None:
                candidates.append((best[1], name, run.info.run_id))
        if not candidates:
            raise SystemExit(f"{init}: no pre-training run of {pipeline.info.run_id} found")
        loss, name, source = min(candidates)
        print(f"{init}: {name} (best held-out-cluster validation loss {loss:.4f}; "
              f"candidates {sorted((round(c[0], 4), c[1]) for c in candidates)})")  # fmt: skip
        folder = export(cfg, source, str(Path(args.out) / init), args.report)
        print(f"  -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
