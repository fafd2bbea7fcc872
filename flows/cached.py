"""A fully cached run, decided before torch, Prefect or MLflow is imported.

``metapt run`` first follows the plan's walk (:func:`tasks.plan.follow`) in pipeline order:
each stage's key from its code identity, its spec and its inputs' references, each input
reference from the stored record of the stage before it. If every stage of the run is in the
store, intact, the run has nothing to compute: the stored report is printed and the rerun is
recorded as one MLflow run, tagged ``metapt.cached=true`` and linked to the runs that computed
the report. The first stage that is missing ends the walk, and the pipeline runs as usual (its
flows then serve what is stored and compute the rest).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from metapt_core.config import PipelineConfig
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.cache import StageOutcome, lookup, stage_key

log = logging.getLogger(__name__)


@dataclass
class CachedRun:
    """Every stage outcome of a fully stored run, by label, and the references they hold."""

    stages: dict[str, StageOutcome] = field(default_factory=dict)
    outputs: plan.Outputs = field(default_factory=plan.Outputs)

    @property
    def report(self) -> StageOutcome:
        return self.stages["report"]

    def report_dir(self) -> Path | None:
        """The folder holding the stored ``report.md`` (and its tables and plots), if any."""
        root = Path(self.report.ref.path)
        root = root if root.is_dir() else root.parent
        found = sorted(root.rglob("report.md"))
        return found[0].parent if found else None

    def report_markdown(self) -> str:
        folder = self.report_dir()
        if folder is None:
            return f"(report at {self.report.ref.path})"
        return (folder / "report.md").read_text("utf-8")


def find_cached_run(cfg: PipelineConfig) -> CachedRun | None:
    """The stored outcomes of every stage of ``cfg``'s run, or None at the first one missing.

    Follows the plan's walk (:func:`tasks.plan.follow`): each wave's stages are looked up under
    the key their flow would compute them with.
    """
    from tasks.core import code_identity

    digests: dict[tuple[tuple[str, ...], str], str] = {}
    run = CachedRun()

    def stored(label: str, stage: plan.StagePlan) -> StageOutcome | None:
        code = (stage.entries, stage.wrapper)
        if code not in digests:
            digests[code] = code_identity(stage.entries, stage.wrapper).digest
        key = stage_key(
            stage.stage, f"{plan.STORE_EPOCH}:{digests[code]}", stage.settings, stage.upstream
        )
        outcome = lookup(cfg.work_path, stage.stage, key)
        if outcome is not None:
            run.stages[label] = outcome
        return outcome

    def serve(wave: plan.Wave) -> list[ArtifactRef | None] | None:
        refs: list[ArtifactRef | None] = []
        for label, stage in wave:
            outcome = stored(label, stage)
            if outcome is None:
                return None
            refs.append(outcome.ref)
        return refs

    outputs = plan.follow(cfg, serve)
    if outputs is None:
        return None
    run.outputs = outputs
    return run


def record_cached_run(
    cfg: PipelineConfig,
    run: CachedRun,
    overrides: list[str],
    profile: str,
    flow: str = "metapt",
    flow_run_id: str = "",
) -> str:
    """One MLflow pipeline run for a rerun served whole from the store; its id (``flow``: the
    entry flow it was asked of, ``metapt`` for ``metapt run`` and the full pipeline;
    ``flow_run_id``: the Prefect flow run that served it, if one did).

    Tagged ``metapt.cached=true``, ``metapt.source_run_id`` (the report's computing run) and
    ``metapt.source_pipeline_run`` (the pipeline run it belongs to); it holds the resolved
    configuration, the report's metrics and ``results/report.md``.
    """
    import socket

    from tasks.publish import log_cluster_diagnostics, log_dataset_inputs, publish
    from tasks.tracking import (
        CACHED_TAG,
        FLOW_RUN_TAG,
        HOST_TAG,
        KIND_TAG,
        PARENT_TAG,
        SOURCE_RUN_TAG,
        Tracker,
        source_tags,
    )

    tracker = Tracker.open(cfg)
    for run_id in tracker.reap_killed():
        print(f"marked MLflow run {run_id} KILLED (its process died)", flush=True)
    source = run.report.source_run_id
    source_pipeline = ""
    if source:
        try:
            source_pipeline = tracker.client.get_run(source).data.tags.get(PARENT_TAG, "")
        except Exception:  # the computing run lives in another tracking store
            source_pipeline = ""
    run_id = tracker.start_run(
        "metapt-cached",
        tags={
            KIND_TAG: "pipeline",
            CACHED_TAG: "true",
            SOURCE_RUN_TAG: source,
            "metapt.source_pipeline_run": source_pipeline,
            "metapt.flow": flow,
            **({FLOW_RUN_TAG: flow_run_id} if flow_run_id else {}),
            "metapt.profile": profile,
            "metapt.overrides": " ".join(overrides),
            "metapt.stages_served": str(len(run.stages)),
            HOST_TAG: socket.gethostname(),
            **source_tags(),
        },
        parent_run_id="",
    )
    try:
        tracker.log_config(run_id, cfg)
        tracker.log_stats(run_id, {k: v for k, v in run.report.stats.items() if k != "cells"})
        report_dir = run.report_dir()
        if report_dir is None:
            tracker.client.log_text(run_id, run.report_markdown(), "results/report.md")
        else:
            tracker.log_artifacts(run_id, report_dir, "results")
        try:  # views of the run: a failure is a warning, never a failed rerun
            outputs = run.outputs
            inputs = {"pool": outputs.pool, "tasks": outputs.tasks, "shards": outputs.shards}
            log_dataset_inputs(tracker, run_id, inputs)
            log_cluster_diagnostics(tracker, run_id, inputs)
            if report_dir is not None:
                publish(tracker, run_id, report_dir)
        except Exception as error:
            log.warning("cached run %s: the answer not put on the MLflow run: %s", run_id, error)
    except BaseException:
        tracker.end(run_id, ok=False)
        raise
    tracker.end(run_id)
    return run_id
