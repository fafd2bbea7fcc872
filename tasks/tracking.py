"""MLflow tracking through an explicit client: one parent run per pipeline run, child runs below.

The fluent API keeps the active run per thread, which tasks submitted to a task runner do not
share, so every call here names its run id. The tracking URI is always absolute or a server.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metapt_core import locks
from metapt_core.config import PipelineConfig, dump_yaml, flatten, to_dict
from metapt_core.errors import ConfigError
from metapt_core.locks import file_lock

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
FLOW_RUN_TAG = "prefect.flow_run_id"
KIND_TAG = "metapt.kind"  # pipeline | stage | cell
STAGE_TAG = "metapt.stage"
CACHED_TAG = "metapt.cached"
SOURCE_RUN_TAG = "metapt.source_run_id"  # the run that computed a cached output
KEY_TAG = "metapt.cache_key"
ALIVE_TAG = "metapt.alive_lock"  # a file the pipeline run's process holds locked while it lives
HOST_TAG = "metapt.host"
# The kind of experiment, for MLflow releases whose UI reads it from this tag: model-training
# runs ("Model training": the runs table), not GenAI traces. MLflow 3.17's UI takes the view
# from the address instead (tasks.publish.TRAINING_VIEW).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

_MAX_PARAM = 6000
_clients: dict[str, Any] = {}
_lock = threading.Lock()


def served_mlflow(cfg: PipelineConfig) -> str:
    """The URL of the MLflow server ``make serve`` runs for this work folder, if it answers.

    Its backend is the work folder's SQLite file, so a run written through it lands in the same
    store; its artifacts are proxied, so they must be written through it too.
    """
    import json
    import urllib.request

    state = cfg.work_path / "services" / "state.json"
    try:
        url = str(json.loads(state.read_text("utf-8"))["mlflow_url"])
        with urllib.request.urlopen(f"{url}/health", timeout=0.5) as answer:  # noqa: S310
            return url if answer.status == 200 else ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def resolve_tracking_uri(cfg: PipelineConfig, create: bool = True) -> str:
    """``tracking.mlflow_uri``, else ``$MLFLOW_TRACKING_URI``, else the ``make serve`` MLflow
    server of the work folder when it is up, else SQLite under the work dir (whose folder is
    made unless ``create`` is False).

    Raises:
        ConfigError: a relative SQLite path or a bare relative folder, which would resolve
            against whatever folder a worker process happens to run in.
    """
    uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        uri = served_mlflow(cfg)
    if not uri:
        db = cfg.work_path / "mlflow" / "mlflow.db"
        if create:
            db.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{db}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ConfigError("tracking.mlflow_uri", uri, "must be absolute (sqlite:////abs/mlflow.db)")
    if "://" not in uri and not Path(uri).is_absolute():
        raise ConfigError("tracking.mlflow_uri", uri, "must be an absolute path or a URL")
    return uri


def local_artifact_root(cfg: PipelineConfig, uri: str) -> str | None:
    """Artifact location for a new experiment: under the work dir unless a server decides."""
    if uri.startswith(("http://", "https://")):
        return None
    return (cfg.work_path / "mlflow" / "artifacts").as_uri()


def client_for(uri: str) -> Any:
    """One ``MlflowClient`` per tracking URI per process."""
    from mlflow.tracking import MlflowClient

    with _lock:
        if uri not in _clients:
            _clients[uri] = MlflowClient(tracking_uri=uri)
        return _clients[uri]


def source_tags() -> dict[str, str]:
    """MLflow's source tags of a pipeline run: the git commit (``+dirty`` when the checkout has
    changes), the command, its type, and the user."""
    import getpass
    import subprocess
    import sys

    tags = {
        "mlflow.source.name": " ".join(["metapt", *sys.argv[1:]])[:500] or "metapt",
        "mlflow.source.type": "LOCAL",
    }
    with contextlib.suppress(Exception):
        tags["mlflow.user"] = getpass.getuser()
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if commit:
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            tags["mlflow.source.git.commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return tags


def _plain_params(params: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:_MAX_PARAM] for k, v in params.items()}


def split_metrics(stats: dict[str, Any]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Scalars and curves (lists of numbers, logged as step metrics) found in ``stats``."""
    scalars: dict[str, float] = {}
    curves: dict[str, list[float]] = {}
    for key, value in flatten(stats).items():
        if (
            isinstance(value, bool)
            or isinstance(value, int | float)
            and math.isfinite(float(value))
        ):
            scalars[key] = float(value)
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        ):
            curves[key] = [float(v) for v in value]
    return scalars, curves


@contextlib.contextmanager
def _sqlite_setup_lock(uri: str) -> Iterator[None]:
    """Serialise the first connection to a SQLite store across processes: two pipeline runs
    creating (migrating) the same new database at once fail in alembic."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    with file_lock(Path(uri.removeprefix("sqlite:///")).with_suffix(".lock")):
        yield


@dataclass(frozen=True)
class Tracker:
    """Where a pipeline run is recorded: the tracking URI, the experiment, the parent run."""

    uri: str
    experiment_id: str
    parent_run_id: str = ""

    @classmethod
    def open(cls, cfg: PipelineConfig) -> Tracker:
        """Connect to the configured store and make sure the experiment exists."""
        uri = resolve_tracking_uri(cfg)
        with _sqlite_setup_lock(uri):
            return cls._open(cfg, uri)

    @classmethod
    def _open(cls, cfg: PipelineConfig, uri: str) -> Tracker:
        client = client_for(uri)
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        if experiment is not None:
            if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before the tag, or by hand
                client.set_experiment_tag(
                    experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
                )
            return cls(uri=uri, experiment_id=experiment.experiment_id)
        try:
            experiment_id = client.create_experiment(
                cfg.tracking.experiment,
                artifact_location=local_artifact_root(cfg, uri),
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        except Exception:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(cfg.tracking.experiment)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
        return cls(uri=uri, experiment_id=experiment_id)

    @property
    def client(self) -> Any:
        return client_for(self.uri)

    def start_run(
        self,
        name: str,
        tags: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> str:
        """Create a run (a child of ``parent_run_id``, default the pipeline run); its id."""
        all_tags = {RUN_NAME_TAG: name, **(tags or {})}
        parent = self.parent_run_id if parent_run_id is None else parent_run_id
        if parent:
            all_tags[PARENT_TAG] = parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        run_id: str = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in _plain_params(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_stats(self, run_id: str, stats: dict[str, Any], prefix: str = "") -> None:
        """Scalars as metrics, number lists (loss curves) as step metrics."""
        from mlflow.entities import Metric

        scalars, curves = split_metrics(stats)
        now = int(time.time() * 1000)
        metrics = [Metric(f"{prefix}{k}", v, now, 0) for k, v in scalars.items()]
        for key, curve in curves.items():
            metrics += [Metric(f"{prefix}{key}", v, now, step) for step, v in enumerate(curve)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])

    def log_config(self, run_id: str, cfg: PipelineConfig) -> None:
        """The resolved configuration as params (flattened) and as ``config/config.yaml``."""
        from metapt_core.redact import redact

        # Preflight refuses secrets in settings; redaction is the second line of defence.
        self.log_params(run_id, {k: redact(str(v)) for k, v in flatten(to_dict(cfg)).items()})
        self.client.log_text(run_id, redact(dump_yaml(cfg)), "config/config.yaml")

    def log_artifacts(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.is_file():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def reap_killed(self) -> list[str]:
        """Mark KILLED the RUNNING pipeline runs whose process died, and their RUNNING children.

        A pipeline run holds an exclusive ``flock`` on the file in its ``metapt.alive_lock`` tag
        while its process lives (:func:`hold_alive`); the kernel releases it when the process is
        killed. A run of this host whose lock can be taken is dead. Runs of other hosts, and
        runs whose lock is still held, are left alone. Returns the ids marked KILLED.
        """
        import socket

        running = self.client.search_runs(
            [self.experiment_id], "attributes.status = 'RUNNING'", max_results=5000
        )
        dead: set[str] = set()
        for run in running:
            tags = run.data.tags
            lock = tags.get(ALIVE_TAG)
            if tags.get(KIND_TAG) != "pipeline" or not lock:
                continue
            if tags.get(HOST_TAG) != socket.gethostname() or not locks.is_free(Path(lock)):
                continue
            dead.add(run.info.run_id)
        if not dead:
            return []
        children: dict[str, list[str]] = {}
        for run in running:
            parent = run.data.tags.get(PARENT_TAG)
            if parent:
                children.setdefault(parent, []).append(run.info.run_id)
        killed: list[str] = []
        todo = sorted(dead)
        while todo:
            run_id = todo.pop()
            killed.append(run_id)
            todo.extend(children.get(run_id, []))
        for run_id in killed:
            self.client.set_tag(run_id, "metapt.killed", "the process of this pipeline run died")
            self.client.set_terminated(run_id, "KILLED")
        return killed


def hold_alive(path: Path) -> int:
    """Create and lock ``path`` for as long as this process lives (or until :func:`release_alive`)."""
    return locks.acquire(path)


def release_alive(path: Path, fd: int) -> None:
    locks.release(fd, path)
