"""A pipeline run from its entry point: the configuration resolved once, the MLflow parent run,
and the plan's steps run as subflows handed typed references.

Entry points (``metapt run``, the ``metapt/full-pipeline`` deployment, one deployment per step)
alone take strings (:class:`RunRequest`); they resolve the configuration once and hand the step
flows the run's context and the references made so far (:class:`tasks.plan.Outputs`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal

from flows.env import WORK_DIR_ENV
from metapt_core.config import PipelineConfig, dump_yaml, load_config
from metapt_core.errors import ConfigError
from metapt_core.store import atomic_write_text
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


def run_name(profile: str, cfg: PipelineConfig) -> str:
    """A pipeline run's name: its profile and a short hash of its resolved configuration
    (``default-3f2a9c1e``), so runs of one configuration are recognisable in the Prefect UI."""
    from metapt_core.config import to_dict
    from metapt_core.store import stable_hash

    return f"{profile}-{stable_hash(to_dict(cfg))[:8]}"


def entry_run_name() -> str:
    """An entry flow run's name until its configuration is resolved: its profile (renamed to
    :func:`run_name` once resolved, by :func:`name_flow_run`)."""
    from prefect.runtime import flow_run

    return str(dict(flow_run.parameters or {}).get("profile") or "default")


def name_flow_run(name: str) -> str:
    """Rename the Prefect flow run we are in to ``name``; returns the name it has."""
    flow_run_id, current = current_flow_run()
    if not flow_run_id or current == name:
        return current
    from uuid import UUID

    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(UUID(flow_run_id), name=name)
    except Exception:  # a name is a convenience: keep the run going with the one it has
        return current
    return name


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


@dataclass(frozen=True)
class RunRequest:
    """What a run was asked for, as its entry point (a deployment or ``metapt run``) takes it.

    Attributes:
        profile: a bundled profile (smoke, default, study, paper, control).
        config_file: a YAML file merged over the profile ("" for none).
        overrides: ``section.key=value`` settings.
        refresh: stages to recompute even if stored.
    """

    profile: str = "default"
    config_file: str = ""
    overrides: tuple[str, ...] = ()
    refresh: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        profile: str,
        config_file: str = "",
        overrides: list[str] | str | None = None,
        refresh: list[str] | str | None = None,
    ) -> RunRequest:
        """From an entry point's parameters (a list, one string or nothing for each list)."""
        return cls(profile, config_file or "", tuple(as_list(overrides)), tuple(as_list(refresh)))

    def resolve(self) -> PipelineConfig:
        """The checked configuration: the one resolution of a run (:func:`resolve_config`)."""
        return resolve_config(self.profile, self.config_file, list(self.overrides))


@contextlib.contextmanager
def pipeline_run(flow_name: str, request: RunRequest, cfg: PipelineConfig) -> Iterator[RunContext]:
    """The context of one pipeline run, ``cfg`` resolved from ``request`` and checked
    (:func:`check_run`) by its entry point: creates the MLflow parent run the stages join.

    The parent run is tagged with the Prefect flow run id and holds the resolved configuration
    (params and ``config/config.yaml``); it is also saved as ``<work_dir>/runs/<id>/config.yaml``.
    """
    import socket

    forced = expand_refresh(request.refresh)
    flow_run_id, flow_run_name = current_flow_run()
    tracker = Tracker.open(cfg)
    for run_id in tracker.reap_killed():
        print(f"marked MLflow run {run_id} KILLED (its process died)", flush=True)
    parent_run_id = tracker.start_run(
        f"{flow_name}-{flow_run_name}" if flow_run_name else flow_name,
        tags={
            FLOW_RUN_TAG: flow_run_id,
            KIND_TAG: "pipeline",
            "metapt.flow": flow_name,
            "metapt.profile": request.profile,
            "metapt.overrides": " ".join(request.overrides),
            "metapt.refresh": " ".join(request.refresh),
            HOST_TAG: socket.gethostname(),
            **source_tags(),
        },
        parent_run_id="",
    )
    lock_path = cfg.work_path / "runs" / "alive" / f"{parent_run_id}.lock"
    alive = (lock_path, hold_alive(lock_path))
    try:
        tracker.set_tags(parent_run_id, {ALIVE_TAG: str(lock_path)})
        tracker.log_config(parent_run_id, cfg)
        atomic_write_text(
            cfg.work_path / "runs" / (flow_run_id or parent_run_id) / "config.yaml", dump_yaml(cfg)
        )
        yield RunContext(
            cfg=cfg,
            tracker=replace(tracker, parent_run_id=parent_run_id),
            refresh=forced,
            flow_run_id=flow_run_id,
        )
    except BaseException:
        tracker.end(parent_run_id, ok=False)
        raise
    else:
        tracker.end(parent_run_id)
    finally:
        release_alive(*alive)


def run_steps(
    flow_name: str, request: RunRequest, cfg: PipelineConfig, last: str
) -> dict[str, dict[str, str]]:
    """Run the plan's steps (:data:`tasks.plan.PIPELINE`) up to and including ``last``, each
    as a subflow handed the run's context and the references made so far.

    Returns every reference made (:meth:`tasks.plan.Outputs.to_dict`) and ``mlflow_run_id``.
    """
    from flows.steps import step_flows

    flows = step_flows()
    names = list(flows)
    with pipeline_run(flow_name, request, cfg) as run:
        outputs = plan.Outputs()
        for name in names[: names.index(last) + 1]:
            outputs = flows[name](run, outputs)
        return {**outputs.to_dict(), "mlflow_run_id": {"id": run.tracker.parent_run_id}}


def entry_flow(step: str, module: str) -> Any:
    """The entry flow ``metapt-<step>`` that serves one step on its own (its deployment's):
    string parameters, then the steps up to ``step`` (stored ones served from the store).

    ``module`` binds it as ``<step>_flow`` (``meta_pretrain_flow``): a deployment's entry point
    is that module path.
    """
    from prefect import flow

    def entry(
        profile: Profile = "default",
        config_file: str = "",
        overrides: list[str] | str | None = None,
        refresh: list[str] | str | None = None,
    ) -> Refs:
        request = RunRequest.of(profile, config_file, overrides, refresh)
        return run_entry(f"metapt-{step}", step, request)

    entry.__name__ = entry.__qualname__ = f"{step.replace('-', '_')}_flow"
    entry.__module__ = module
    entry.__doc__ = (
        f"The steps up to {step}, stored stages served from the store; returns every reference "
        "made (``prompt:<init>@<seed>``, ``objective:<seed>`` among them) and ``mlflow_run_id``."
    )
    return flow(name=f"metapt-{step}", flow_run_name=entry_run_name)(entry)


def run_entry(flow_name: str, last: str, request: RunRequest) -> dict[str, dict[str, str]]:
    """The body of an entry flow (a deployment's): resolve the configuration, the one time in
    the run, name the flow run after it, and run the steps up to ``last``.

    A run up to the last step (the full pipeline's, or the evaluate step's own) without
    ``refresh`` whose every stage is stored, intact, computes nothing: like ``metapt run``, it
    is recorded as one cached MLflow run (:mod:`flows.cached`) and returns the stored
    references.
    """
    cfg = request.resolve()
    name_flow_run(run_name(request.profile, cfg))
    expand_refresh(request.refresh)  # unknown stage names fail here, before any work
    ensure_work_dir(cfg)
    if last == plan.PIPELINE[-1].name and not request.refresh:
        served = serve_cached(flow_name, request, cfg)
        if served is not None:
            return served
    check_run(cfg)
    return run_steps(flow_name, request, cfg, last)


def check_run(cfg: PipelineConfig) -> None:
    """Before any work or tracking, fail with a bad setting's one-line message: the sources,
    columns, labels, model, k and shots (:func:`metapt_core.validate.preflight`), and a remote
    grid's reach (:func:`check_grid_reach`)."""
    from metapt_core.validate import preflight

    ensure_work_dir(cfg)
    preflight(cfg, cfg.assets_path)
    check_grid_reach(cfg)


def serve_cached(
    flow_name: str, request: RunRequest, cfg: PipelineConfig
) -> dict[str, dict[str, str]] | None:
    """A run stored whole, recorded as one cached MLflow run of ``flow_name``: its references
    and ``mlflow_run_id``; None when any stage needs computing."""
    from flows.cached import find_cached_run, record_cached_run
    from metapt_core.redact import check_no_secrets

    check_no_secrets(cfg)  # the configuration is logged
    cached = find_cached_run(cfg)
    if cached is None:
        return None
    overrides = list(request.overrides)
    flow_run_id, _ = current_flow_run()
    run_id = record_cached_run(cfg, cached, overrides, request.profile, flow_name, flow_run_id)
    try:  # the answer on the flow run too, as a computing run puts it there
        from tasks.publish import mlflow_run_url, prefect_artifacts

        folder = cached.report_dir()
        if folder is not None:
            tracker = Tracker.open(cfg)
            prefect_artifacts(folder, mlflow_run_url(tracker.uri, tracker.experiment_id, run_id))
    except Exception as error:  # the UI is a view; never fail the run for it
        print(f"Prefect artifacts not written: {error}", flush=True)
    print(f"every stage ({len(cached.stages)}) was served from the store", flush=True)
    return {**cached.outputs.to_dict(), "mlflow_run_id": {"id": run_id}}
