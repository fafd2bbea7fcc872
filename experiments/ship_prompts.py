"""Ship the study's best MetaPT and PPT prompts, chosen on meta-validation (never on test rows).

    python experiments/ship_prompts.py --profile study --report docs/results/study \
        --out prompts/smollm2-135m

The profile's current run must be complete in the store (``metapt run --profile study`` has
finished; the stages a resumed run served from the store count as its own). For each
initialisation (MetaPT-MAML, PPT) it reads the prompts of the profile's pre-training seeds,
keeps the seed whose kept prompt has the lowest validation loss on the held-out clusters
(``unseen_loss``: adaptation to tasks it never trained on) and ``metapt prompts export`` writes
it, with its model card (its seed's meta-objective check, its row of the report), under
``--out``. A MetaPT seed whose meta-objective check says it did not train is never a candidate,
and with no such seed no MetaPT prompt is shipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

INITS = ("metapt_maml", "ppt")


def main(argv: list[str] | None = None) -> int:
    import pandas as pd

    from flows.cached import find_cached_run
    from flows.context import resolve_config
    from flows.prompts import export
    from metapt_core.prompt_card import best_validation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="study")
    parser.add_argument("--report", required=True, help="the profile's report folder")
    parser.add_argument("--out", required=True, help="folder that receives one folder per init")
    args = parser.parse_args(argv)
    cfg = resolve_config(args.profile, "", [])
    run = find_cached_run(cfg)
    if run is None:
        raise SystemExit(f"--profile={args.profile!r}: its run is not complete in {cfg.work_path}")
    check = pd.read_csv(Path(args.report) / "meta_objective.csv")
    trained = {
        int(row.pretrain_seed)
        for row in check.itertuples()
        if row.init == "metapt_maml" and str(row.trained).lower() == "true"
    }
    for init in INITS:
        candidates = []
        for seed in cfg.pretrain_seeds:
            outcome = run.stages.get(f"{init}@{seed}")
            if outcome is None:
                continue
            if init == "metapt_maml" and seed not in trained:
                print(f"{init}: pre-training seed {seed} did not train (meta_objective.csv): "
                      "not a candidate")  # fmt: skip
                continue
            folder = Path(outcome.ref.path)
            folder = folder / "out" if (folder / "out").is_dir() else folder
            best = best_validation(json.loads((folder / "history.json").read_text("utf-8")))
            if best is not None:
                candidates.append((best[1], seed, outcome.source_run_id or str(folder)))
        if not candidates:
            print(f"{init}: no candidate; nothing shipped")
            continue
        loss, seed, source = min(candidates)
        print(
            f"{init}: pre-training seed {seed} (best held-out-cluster validation loss "
            f"{loss:.4f}; candidates {sorted((round(c[0], 4), c[1]) for c in candidates)})"
        )
        folder = export(cfg, source, str(Path(args.out) / init), args.report)
        print(f"  -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
