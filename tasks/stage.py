"""Run one stage through the store cache, with its MLflow child run and its progress.

Every stage task calls :func:`execute_stage`: compute the key, serve a valid stored output (and
record a child run tagged ``metapt.cached`` pointing at the run that computed it), or compute
it in a scratch folder under a fresh child run and commit it to the store.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from metapt_core.config import PipelineConfig, flatten
from metapt_core.store import ArtifactRef
from tasks.cache import (
    OUT,
    PendingStage,
    StageOutcome,
    lookup,
    stage_folder,
    stage_key,
    stage_lock,
)
from tasks.common import scoring_tags
from tasks.core import code_identity
from tasks.plan import STORE_EPOCH, StagePlan, refresh_groups
from tasks.progress import StageProgress, run_logger
from tasks.tracking import (
    CACHED_TAG,
    KEY_TAG,
    KIND_TAG,
    SOURCE_RUN_TAG,
    STAGE_TAG,
    Tracker,
)

# Names accepted by --refresh, mapped to the store stages they force (from the pipeline's steps).
REFRESH_GROUPS: dict[str, tuple[str, ...]] = refresh_groups()


Compute = Callable[[Path, StageProgress], tuple[ArtifactRef, dict[str, Any]]]


class CoreResult(Protocol):
    ref: ArtifactRef


@dataclass(frozen=True)
class RunContext:
    """What every stage task needs to know about the pipeline run it belongs to."""

    cfg: PipelineConfig
    tracker: Tracker
    refresh: frozenset[str] = frozenset()
    flow_run_id: str = ""

    def refreshes(self, store_stage: str) -> bool:
        return store_stage in self.refresh


def expand_refresh(names: Iterable[str]) -> frozenset[str]:
    """Store stages forced by ``--refresh`` names.

    Raises:
        ConfigError: an unknown stage name.
    """
    from metapt_core.errors import ConfigError

    forced: set[str] = set()
    for name in names:
        if name not in REFRESH_GROUPS:
            raise ConfigError(
                "--refresh", name, f"unknown stage (known: {', '.join(REFRESH_GROUPS)})"
            )
        forced.update(REFRESH_GROUPS[name])
    return frozenset(forced)


def plain(value: Any) -> Any:
    """JSON-safe plain data (numpy scalars and arrays become Python numbers and lists)."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, ArtifactRef):
        return value.to_dict()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def result_stats(result: Any) -> dict[str, Any]:
    """The plain ``stats`` and ``metrics`` of a core result object (either may be missing)."""
    stats: dict[str, Any] = {}
    for name in ("stats", "metrics"):
        value = getattr(result, name, None)
        if isinstance(value, dict):
            stats.update(value)
    return plain(stats)


@dataclass
class StageSpec:
    """One stage computation: what it is keyed on, how it computes, what it logs."""

    stage: str  # store stage name (folder under artifacts/)
    settings: dict[str, Any]
    upstream: dict[str, ArtifactRef]
    entries: list[str]  # ``module:function`` the stage runs: their import closure is keyed
    compute: Compute
    artifacts: list[str] = field(default_factory=list)  # paths in out/ logged to MLflow
    run_name: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None  # default: the pipeline run
    wrapper: str = ""  # the task module (default: the module that defines ``compute``)

    @classmethod
    def of(cls, plan: StagePlan, compute: Compute, **options: Any) -> StageSpec:
        """The spec of a :class:`~tasks.plan.StagePlan` (its key parts) and how it computes."""
        return cls(
            stage=plan.stage,
            settings=plan.settings,
            upstream=plan.upstream,
            entries=list(plan.entries),
            compute=compute,
            wrapper=plan.wrapper,
            **options,
        )


def execute_stage(ctx: RunContext, spec: StageSpec) -> StageOutcome:
    """Serve ``spec`` from the store, or compute and store it; either way, trace it in MLflow."""
    logger = run_logger()
    # The wrapper's own module is part of the code identity: it shapes what is stored too.
    wrapper = spec.wrapper or getattr(spec.compute, "__module__", "") or ""
    identity = code_identity(spec.entries, wrapper)
    key = stage_key(spec.stage, f"{STORE_EPOCH}:{identity.digest}", spec.settings, spec.upstream)
    tracker = ctx.tracker
    name = spec.run_name or spec.stage
    tags = {
        STAGE_TAG: spec.stage,
        KIND_TAG: "stage",
        KEY_TAG: key,
        "prefect.flow_run_id": ctx.flow_run_id,
        **spec.tags,
    }
    params = {**flatten({"settings": plain(spec.settings)}), **spec.params}
    work_dir = ctx.cfg.work_path

    def serve(hit: StageOutcome) -> StageOutcome:
        run_id = tracker.start_run(
            name,
            tags={**tags, CACHED_TAG: "true", SOURCE_RUN_TAG: hit.source_run_id},
            params=params,
            parent_run_id=spec.parent_run_id,
        )
        tracker.log_stats(run_id, hit.stats)
        tracker.end(run_id)
        logger.info(
            "%s: served from cache %s (computed by run %s)", name, key[:16], hit.source_run_id
        )
        return StageOutcome(**{**hit.__dict__, "run_id": run_id})

    forced = ctx.refreshes(spec.stage)
    hit = None if forced else lookup(work_dir, spec.stage, key)
    if hit is not None:
        return serve(hit)

    def waiting() -> None:
        logger.info("%s: waiting for another run computing %s", name, key[:16])

    # One computation per key at a time, across processes: a second run waits, then serves.
    with stage_lock(work_dir, spec.stage, key, on_wait=waiting):
        hit = None if forced else lookup(work_dir, spec.stage, key)
        if hit is not None:
            return serve(hit)
        return _compute(ctx, spec, key, name, tags, params, identity.to_dict())


def _compute(
    ctx: RunContext,
    spec: StageSpec,
    key: str,
    name: str,
    tags: dict[str, str],
    params: dict[str, Any],
    code: dict[str, Any],
) -> StageOutcome:
    """Compute ``spec`` in its partial folder under a fresh child run and commit it."""
    from metapt_core.scoring.dtype_probe import cpu_model

    logger = run_logger()
    tracker = ctx.tracker
    work_dir = ctx.cfg.work_path
    run_id = tracker.start_run(
        name, tags={**tags, CACHED_TAG: "false"}, params=params, parent_run_id=spec.parent_run_id
    )
    pending = PendingStage(work_dir, spec.stage, key)
    try:
        if pending.resumable:
            logger.info(
                "%s: computing (key %s), resuming from %s",
                name,
                key[:16],
                ", ".join(pending.resumable),
            )
        else:
            logger.info("%s: computing (key %s)", name, key[:16])
        ref, stats = spec.compute(pending.out_dir, StageProgress(name))
        stats = plain(stats)
        outcome = pending.commit(
            ref,
            stats,
            source_run_id=run_id,
            extra={
                "settings": plain(spec.settings),
                # what it read, by digest: the provenance an exported prompt's card states
                "upstream": {name: ref.sha256 for name, ref in sorted(spec.upstream.items())},
                "code": code,
                "flow_run_id": ctx.flow_run_id,
                # where it ran: a store carried to another machine still says (cache export)
                "machine": cpu_model(),
            },
        )
    except BaseException:
        pending.abort()
        tracker.end(run_id, ok=False)
        raise
    tracker.set_tags(run_id, {SOURCE_RUN_TAG: run_id, **scoring_tags(ctx.cfg)})
    tracker.log_stats(run_id, {**stats, "stage_seconds": outcome.seconds})
    out_root = stage_folder(work_dir, spec.stage, key) / OUT
    for rel in spec.artifacts:
        source = out_root / rel
        target = Path(spec.stage) / (rel if source.is_dir() else Path(rel).parent)
        tracker.log_artifacts(run_id, source, target.as_posix())
    tracker.end(run_id)
    logger.info("%s: done in %.1f s", name, outcome.seconds)
    return outcome


def core_output(result: Any) -> tuple[ArtifactRef, dict[str, Any]]:
    """(ref, stats) of a core result object."""
    return result.ref, result_stats(result)
