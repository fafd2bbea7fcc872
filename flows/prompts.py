"""``metapt prompts export``: a learned prompt as a peft adapter folder with its model card.

    metapt prompts export RUN_ID --out exported/metapt-maml-p0     # a pre-training stage's run
    metapt prompts export .metapt/artifacts/meta-pretrain/<key> --out exported/p0 --report DIR

``RUN_ID`` is the MLflow run of a ``ppt`` or ``meta-pretrain`` stage (its prompt is read from
this work folder's store, and its evaluation table from the results of the pipeline run it
belongs to); a folder is a stored prompt (``.../<key>`` or ``.../<key>/out``), with the
evaluation table from ``--report`` (a report folder holding ``results.csv``).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from metapt_core.assets import builtin_folder, is_builtin
from metapt_core.config import PipelineConfig
from metapt_core.errors import MetaptError
from metapt_core.store import sha256_file

PROMPT_STAGES = ("ppt", "meta-pretrain")


def _prompt_folder(path: Path) -> Path | None:
    for folder in (path, path / "out"):
        if (folder / "prompt.safetensors").is_file():
            return folder
    return None


def _record(prompt_dir: Path) -> dict[str, Any]:
    file = prompt_dir.parent / "record.json"
    return dict(json.loads(file.read_text("utf-8"))) if file.is_file() else {}


def _evaluation(results_csv: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    import pandas as pd

    from metapt_core.prompt_card import evaluation_rows, init_name

    if not results_csv.is_file():
        return []
    return evaluation_rows(pd.read_csv(results_csv), init_name(meta), int(meta.get("seed", 0)))


def _objective(results_csv: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The meta-objective check of the prompt's pre-training seed, from the ``meta_objective.csv``
    beside the report's ``results.csv`` (none for a report without the check)."""
    import pandas as pd

    from metapt_core.prompt_card import objective_rows

    check = results_csv.parent / "meta_objective.csv"
    if not check.is_file():
        return []
    return objective_rows(pd.read_csv(check), int(meta.get("seed", 0)))


def _from_run(cfg: PipelineConfig, run_id: str, into: Path) -> tuple[Path, Path | None, str]:
    """(prompt folder, results.csv of its pipeline run downloaded into ``into`` or None, a
    source line) of a stage run."""
    from tasks.tracking import KEY_TAG, PARENT_TAG, STAGE_TAG, Tracker

    tracker = Tracker.open(cfg)
    try:
        run = tracker.client.get_run(run_id)
    except Exception:
        raise MetaptError(f"source={run_id!r}: no such folder or MLflow run") from None
    stage, key = run.data.tags.get(STAGE_TAG, ""), run.data.tags.get(KEY_TAG, "")
    if stage not in PROMPT_STAGES or not key:
        raise MetaptError(f"source={run_id!r}: not a ppt or meta-pretrain stage run ({stage!r})")
    folder = _prompt_folder(cfg.work_path / "artifacts" / stage / key[:16])
    if folder is None:
        raise MetaptError(f"source={run_id!r}: its prompt is not in {cfg.work_path}'s store")
    results = None
    parent = run.data.tags.get(PARENT_TAG, "")
    if parent:
        try:
            local = tracker.client.download_artifacts(parent, "results/results.csv", str(into))
            results = Path(local)
            with contextlib.suppress(Exception):  # a report from before the check
                tracker.client.download_artifacts(parent, "results/meta_objective.csv", str(into))
        except Exception:  # the pipeline run stopped before its report
            results = None
    return folder, results, f"MLflow run `{run_id}` (stage {stage}, key `{key[:16]}`)"


def backbone_digest(cfg: PipelineConfig, name: str) -> str:
    """sha256 of the weights file a builtin or local backbone resolves to (``""`` for hub
    names, whose weights are not on this machine). Looks a builtin up without preparing it."""
    path = builtin_folder(name, cfg.assets_path) if is_builtin(name) else Path(name)
    weights = path / "model.safetensors"
    return sha256_file(weights) if weights.is_file() else ""


def export(cfg: PipelineConfig, source: str, out: str, report: str = "") -> Path:
    """Export the prompt of ``source`` (a stage run id or a stored prompt folder) to ``out``."""
    from metapt_core.assets import portable_name
    from metapt_core.prompt import load_prompt
    from metapt_core.prompt_card import export_prompt

    target = Path(out)
    if target.exists():
        raise MetaptError(f"out={out!r}: already exists")
    with tempfile.TemporaryDirectory(prefix="metapt-export-") as tmp:
        folder = _prompt_folder(Path(source))
        results: Path | None = None
        if folder is not None:
            where = f"stored prompt `{folder}`"
        else:
            folder, results, where = _from_run(cfg, source, Path(tmp))
        if report:
            results = Path(report) / "results.csv"
            if not results.is_file():
                raise MetaptError(f"report={report!r}: holds no results.csv")
        _, meta = load_prompt(folder)
        evaluation = _evaluation(results, meta) if results is not None else []
        objective = _objective(results, meta) if results is not None else []
    name = str(meta.get("backbone", ""))
    return export_prompt(
        folder,
        target,
        base_model=portable_name(name),
        backbone_digest=backbone_digest(cfg, name),
        record=_record(folder),
        evaluation=evaluation,
        source=where,
        objective=objective,
    )
