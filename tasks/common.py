"""Helpers shared by the stage tasks: the Prefect task options, assets, refs as plain data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from metapt_core.config import PipelineConfig
from metapt_core.store import ArtifactRef
from tasks.plan import BACKBONE_LOADER, assets_ref

__all__ = ["BACKBONE_LOADER", "assets_ref"]

# Stage tasks are cached by the artifact store (see tasks.cache), not by Prefect's result cache.
TASK_OPTIONS: dict[str, Any] = {"persist_result": False, "log_prints": True}


def no_cache() -> Any:
    from prefect.cache_policies import NO_CACHE

    return NO_CACHE


def as_state(outcome: Any) -> Any:
    """What a stage task returns: for an outcome served from the store, a Completed state named
    ``Cached`` (so the Prefect UI shows the task run as cached) holding the outcome; else the
    outcome. Flows read either with :func:`outcome_of`."""
    if not getattr(outcome, "cached", False):
        return outcome
    from prefect.states import Completed

    message = f"served from the store (computed by MLflow run {outcome.source_run_id})"
    return Completed(name="Cached", data=outcome, message=message)


def outcome_of(value: Any) -> Any:
    """The stage outcome of a task call: the value itself, or the data of its returned state."""
    from prefect.states import State

    return value.result() if isinstance(value, State) else value


def asset_paths(cfg: PipelineConfig) -> Any:
    """The asset folders handed to the core ingest functions."""
    from metapt_core.assets import AssetPaths

    return AssetPaths.under(cfg.assets_path)


def pretrain_on_ranks(
    cfg: PipelineConfig, shards: ArtifactRef, out_dir: Path, kind: str, progress: Any
) -> Any:
    """A pre-training stage on ``cfg.distributed.nproc_per_node`` torchrun ranks
    (:func:`metapt_core.meta.launch.launch_pretrain`): rank 0's progress lines drive
    ``progress``, every other line goes to the run log."""
    from metapt_core.meta.launch import launch_pretrain, progress_of
    from tasks.progress import run_logger

    logger = run_logger()

    def relay(line: str) -> None:
        step = progress_of(line)
        if step is not None:
            progress(*step)
        else:
            logger.info("torchrun: %s", line)

    return launch_pretrain(cfg, shards, out_dir, kind, log=relay)


def dask_worker() -> str:
    """The address of the Dask worker this runs in ('' outside one)."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return ""


def load_prompt_model(cfg: PipelineConfig) -> Any:
    """:func:`metapt_core.lm.load_prompt_model` (the ``BACKBONE_LOADER`` entry, made once per
    process), imported when a stage first computes: importing this module (as the fully
    cached run does) loads no torch."""
    from metapt_core.lm import load_prompt_model as load

    return load(cfg)


def get_backbone(cfg: PipelineConfig) -> Any:
    """The frozen backbone wrapped for scoring, shared by the stages that compute.

    Only stages that actually compute call this, so a fully cached run never loads the model.
    """
    return load_prompt_model(cfg)


def scoring_tags(cfg: PipelineConfig) -> dict[str, str]:
    """Run tags of the scoring path this process used for ``cfg`` (none if it loaded no model):
    the path in words and every fallback, so no fallback is silent in the MLflow UI."""
    lm = sys.modules.get("metapt_core.lm")  # not imported: no model was loaded
    model = lm.loaded_prompt_model(cfg) if lm is not None else None
    if model is None:
        return {}
    fallbacks = list(getattr(model, "fallbacks", []))
    return {
        "metapt.scoring_path": str(getattr(model, "path", "")),
        "metapt.scoring_fallbacks": "; ".join(fallbacks) if fallbacks else "none",
    }
