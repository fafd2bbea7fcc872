"""Open a pipeline run: resolve the config, connect MLflow, create (or join) the parent run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Literal

from flows.env import WORK_DIR_ENV
from metapt_core.config import PipelineConfig, dump_yaml, load_config
from metapt_core.errors import ConfigError
from metapt_core.store import ArtifactRef, atomic_write_text
from tasks import plan
from tasks.stage import RunContext, expand_refresh
from tasks.tracking import (
    ALIVE_TAG,
    FLOW_RUN_TAG,
    HOST_TAG,
    KIND_TAG,
    Tracker,
    hold_alive,
    release_alive,
    source_tags,
)

Refs = dict[str, dict[str, str]]
# The bundled profiles, typed so that the deployments' parameter form offers them as a choice
# (tests check it against metapt_core.config.PROFILES).
Profile = Literal["smoke", "default", "study", "paper", "control"]


def as_list(value: list[str] | str | None) -> list[str]:
    """A deployment parameter given as a list, one string, or nothing."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def resolve_config(
    profile: str, config_file: str = "", overrides: list[str] | str | None = None
) -> PipelineConfig:
    """The checked config; ``$METAPT_WORK_DIR`` (set by ``make serve``) is a default work_dir."""
    pre = [f"work_dir={os.environ[WORK_DIR_ENV]}"] if os.environ.get(WORK_DIR_ENV) else []
    return load_config(profile, config_file or None, pre + as_list(overrides))


def ensure_work_dir(cfg: PipelineConfig) -> None:
    """Create the work folder, or fail with one line naming ``work_dir`` and the reason.

    Raises:
        ConfigError: the folder cannot be created or written.
    """
    path = cfg.work_path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError("work_dir", cfg.work_dir, f"cannot be created ({reason})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError("work_dir", cfg.work_dir, "is not writable")


def flow_run_name() -> str:
    """A flow run's name: its profile and a short hash of its resolved configuration
    (``default-3f2a9c1e``), so runs of one configuration are recognisable in the Prefect UI."""
    from prefect.runtime import flow_run

    from metapt_core.config import to_dict
    from metapt_core.store import stable_hash

    params = dict(flow_run.parameters or {})
    profile = str(params.get("profile") or "default")
    try:
        cfg = resolve_config(profile, params.get("config_file") or "", params.get("overrides"))
    except Exception:  # the flow itself reports the bad setting
        return f"{profile}-invalid"
    return f"{profile}-{stable_hash(to_dict(cfg))[:8]}"


def current_flow_run() -> tuple[str, str]:
    """(id, name) of the Prefect flow run we are in, or empty strings."""
    try:
        from prefect.runtime import flow_run

        return str(flow_run.id or ""), str(flow_run.name or "")
    except Exception:
        return "", ""


def check_grid_reach(cfg: PipelineConfig) -> None:
    """A remote Dask grid needs a shared store, an MLflow server and a Prefect server
    (:func:`flows.remote.check_remote_grid`); nothing is checked without one."""
    if not cfg.grid.dask_address:
        return
    from prefect.settings import PREFECT_API_URL

    from flows.remote import check_remote_grid
    from tasks.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(cfg, create=False)  # nothing written before the check
    check_remote_grid(cfg, uri, str(PREFECT_API_URL.value() or ""))


@contextlib.contextmanager
def pipeline_run(
    flow_name: str,
    profile: str,
    config_file: str,
    overrides: list[str] | str | None,
    refresh: list[str] | str | None,
    parent_run_id: str,
) -> Iterator[RunContext]:
    """The context of one flow: joins ``parent_run_id`` or creates the MLflow parent run.

    The parent run is tagged with the Prefect flow run id and holds the resolved configuration
    (params and ``config/config.yaml``); it is also saved as ``<work_dir>/runs/<id>/config.yaml``.
    """
    cfg = resolve_config(profile, config_file, overrides)
    forced = expand_refresh(as_list(refresh))
    owner = not parent_run_id
    if owner:
        from metapt_core.validate import preflight_once

        ensure_work_dir(cfg)
        # Before any work or tracking: a bad setting fails the flow run with its one-line message.
        preflight_once(cfg, cfg.assets_path)
        check_grid_reach(cfg)
    flow_run_id, flow_run_name = current_flow_run()
    tracker = Tracker.open(cfg)
    alive: tuple[Any, int] | None = None
    if owner:
        import socket

        for run_id in tracker.reap_killed():
            print(f"marked MLflow run {run_id} KILLED (its process died)", flush=True)
        parent_run_id = tracker.start_run(
            f"{flow_name}-{flow_run_name}" if flow_run_name else flow_name,
            tags={
                FLOW_RUN_TAG: flow_run_id,
                KIND_TAG: "pipeline",
                "metapt.flow": flow_name,
                "metapt.profile": profile,
                "metapt.overrides": " ".join(as_list(overrides)),
                "metapt.refresh": " ".join(as_list(refresh)),
                HOST_TAG: socket.gethostname(),
                **source_tags(),
            },
            parent_run_id="",
        )
        lock_path = cfg.work_path / "runs" / "alive" / f"{parent_run_id}.lock"
        alive = (lock_path, hold_alive(lock_path))
        tracker.set_tags(parent_run_id, {ALIVE_TAG: str(lock_path)})
        tracker.log_config(parent_run_id, cfg)
        atomic_write_text(
            cfg.work_path / "runs" / (flow_run_id or parent_run_id) / "config.yaml", dump_yaml(cfg)
        )
    ctx = RunContext(
        cfg=cfg,
        tracker=replace(tracker, parent_run_id=parent_run_id),
        refresh=forced,
        flow_run_id=flow_run_id,
    )
    try:
        yield ctx
    except BaseException:
        if owner:
            tracker.end(parent_run_id, ok=False)
        raise
    else:
        if owner:
            tracker.end(parent_run_id)
    finally:
        if alive is not None:
            release_alive(*alive)


def ref_dict(ref: ArtifactRef) -> dict[str, str]:
    return ref.to_dict()


def stage_kwargs(
    profile: str,
    config_file: str,
    overrides: list[str] | str | None,
    refresh: list[str] | str | None,
    upstream: Refs,
    ctx: RunContext,
) -> dict[str, Any]:
    """Parameters for an upstream stage flow called as a subflow of this one."""
    return {
        "profile": profile,
        "config_file": config_file,
        "overrides": as_list(overrides),
        "refresh": as_list(refresh),
        "upstream": upstream,
        "mlflow_parent_run_id": ctx.tracker.parent_run_id,
    }


@contextlib.contextmanager
def stage_flow_run(name: str, params: dict[str, Any]) -> Iterator[tuple[RunContext, Refs]]:
    """The preamble of every stage flow: open (or join) the pipeline run, then take the refs
    handed down, running the step before ``name`` (:data:`tasks.plan.PIPELINE`) as a subflow
    first when one of the step's ``needs`` is missing (a run of one stage's deployment).

    ``params`` are the flow's own parameters (``profile``, ``config_file``, ``overrides``,
    ``refresh``, ``upstream``, ``mlflow_parent_run_id``); a need ending in ``:`` (``prompt:``)
    is a prefix any key satisfies. Yields the run context and the refs so far.
    """
    from flows.stages import upstream_flow

    needs = plan.step(name).needs
    with pipeline_run(
        name,
        params["profile"],
        params["config_file"],
        params["overrides"],
        params["refresh"],
        params.get("mlflow_parent_run_id", ""),
    ) as ctx:
        refs: Refs = dict(params.get("upstream") or {})
        missing = [n for n in needs if not any(k == n or k.startswith(n) for k in refs)]
        before = upstream_flow(name) if missing else None
        if before is not None:
            refs = before(
                **stage_kwargs(
                    params["profile"],
                    params["config_file"],
                    params["overrides"],
                    params["refresh"],
                    refs,
                    ctx,
                )
            )
        yield ctx, refs
