"""The lever study finds its runs through MLflow queries on their tags, not in their logs."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _levers():
    spec = importlib.util.spec_from_file_location("levers", ROOT / "experiments" / "levers.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["levers"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_lever_run_is_found_by_its_profile_and_overrides(tmp_path: Path) -> None:
    from flows.context import resolve_config
    from tasks.tracking import KIND_TAG, Tracker

    levers = _levers()
    settings = [f"work_dir={tmp_path / 'work'}"]
    tracker = Tracker.open(resolve_config("default", str(levers.BASE_CONFIG), settings))
    lever, other = levers.BY_NAME["fomaml"], levers.BY_NAME["outer_lr_0.01"]

    def pipeline(of, status: str = "FINISHED", profile: str = "default") -> str:
        run_id = tracker.start_run("metapt", parent_run_id="", tags={
            KIND_TAG: "pipeline", "metapt.profile": profile,
            "metapt.overrides": " ".join(levers.lever_overrides(of))})  # fmt: skip
        tracker.client.set_terminated(run_id, status)
        return run_id

    assert levers.find_lever_run(lever, "default", settings=settings) == ""
    pipeline(lever, status="FAILED")
    pipeline(other)
    pipeline(lever, profile="study")
    found = pipeline(lever)
    assert levers.find_lever_run(lever, "default", settings=settings) == found
    later = int(time.time() * 1000) + 60_000
    assert levers.find_lever_run(lever, "default", since_ms=later, settings=settings) == ""


def _outer_rate():
    path = ROOT / "experiments" / "outer_rate.py"
    spec = importlib.util.spec_from_file_location("outer_rate", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_outer_rate_is_read_at_the_kept_steps_held_out_cluster_loss(tmp_path: Path) -> None:
    """The selection loss is the held-out clusters' loss at the kept step, not the last or the
    lowest one, and not the seen clusters' ``val_loss``."""
    import json

    selection_loss = _outer_rate().selection_loss
    history = [
        {"step": 0, "val_loss": 2.0, "unseen_loss": 1.9},
        {"step": 5, "val_loss": 1.2, "unseen_loss": 0.8, "kept": 1},
        {"step": 10, "val_loss": 0.9, "unseen_loss": 1.1},
        {"step": 11, "loss": 0.5},  # a training step, not validated
    ]
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert selection_loss(tmp_path) == (0.8, 5)
    # no cluster held out: the seen clusters' validation loss; none kept: the last validated
    history = [{k: v for k, v in h.items() if k not in ("unseen_loss", "kept")} for h in history]
    (tmp_path / "history.json").write_text(json.dumps(history))
    assert selection_loss(tmp_path) == (0.9, 10)
