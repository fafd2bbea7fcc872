"""What a grid on a remote Dask cluster needs, checked before any work.

Workers of a Dask scheduler on another machine run the evaluation groups there: they read the
stage store (``work_dir``), record their runs in MLflow and report their task runs to the Prefect
API. So with a ``grid.dask_address`` that is not on loopback, the work folder must be on shared
storage, MLflow a server (not SQLite or files) and the Prefect API a server, none of them on
loopback. :func:`check_remote_grid` raises a one-line :class:`ConfigError` naming the setting.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from metapt_core.config import PipelineConfig
from metapt_core.errors import ConfigError

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]", "0.0.0.0", ""})
# Filesystem types that other machines can mount too.
SHARED_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "cephfs", "glusterfs",
    "fuse.glusterfs", "beegfs", "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs",
    "fuse.cephfs", "afs", "9p", "virtiofs", "wekafs", "fuse.weka",
})  # fmt: skip


def host_of(address: str) -> str:
    """The host of a Dask or HTTP address (``tcp://h:8786``, ``h:8786``, ``http://h:5000``)."""
    parsed = urlparse(address if "://" in address else f"tcp://{address}")
    return (parsed.hostname or "").lower()


def is_local_address(address: str) -> bool:
    """True for an in-process or loopback scheduler address."""
    return address.startswith("inproc://") or host_of(address) in LOOPBACK


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem that holds ``path`` (the longest mount point above it in
    ``/proc/mounts``; ``unknown`` where that cannot be read)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text("utf-8")
        except OSError:
            return "unknown"
    target = path.resolve()
    best, kind = -1, "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(fields[1].replace("\\040", " "))
        if (target == point or point in target.parents) and len(point.parts) > best:
            best, kind = len(point.parts), fields[2]
    return kind


def check_remote_grid(
    cfg: PipelineConfig, tracking_uri: str, prefect_api_url: str, fs_type: str | None = None
) -> None:
    """Refuse a remote ``grid.dask_address`` with a store, MLflow or Prefect API its workers
    cannot reach.

    Args:
        cfg: the run's configuration.
        tracking_uri: the MLflow URI the run resolved (``resolve_tracking_uri``).
        prefect_api_url: the Prefect API this process talks to ('' for an ephemeral one).
        fs_type: the work folder's filesystem type (default: read from ``/proc/mounts``).

    Raises:
        ConfigError: the setting that would strand the workers, in one line.
    """
    address = cfg.grid.dask_address
    if not address or is_local_address(address):
        return
    where = f"the workers of grid.dask_address={address}"
    kind = fs_type if fs_type is not None else filesystem_type(cfg.work_path)
    if kind not in SHARED_FILESYSTEMS:
        raise ConfigError(
            "work_dir", str(cfg.work_path),
            f"is on a local {kind} filesystem that {where} cannot read; put it on shared storage "
            "mounted at the same path on every machine (NFS, Lustre, CephFS, ...)",
        )  # fmt: skip
    scheme = urlparse(tracking_uri).scheme
    if scheme not in ("http", "https", "databricks"):
        raise ConfigError(
            "tracking.mlflow_uri", tracking_uri,
            f"is a local store ({scheme or 'files'}) that {where} cannot write; "
            "run an MLflow server and set tracking.mlflow_uri=http://HOST:PORT",
        )  # fmt: skip
    if scheme != "databricks" and host_of(tracking_uri) in LOOPBACK:
        raise ConfigError(
            "tracking.mlflow_uri", tracking_uri,
            f"is on loopback, out of reach of {where}; serve MLflow on an address they reach",
        )  # fmt: skip
    if not prefect_api_url or host_of(prefect_api_url) in LOOPBACK:
        raise ConfigError(
            "PREFECT_API_URL", prefect_api_url or "(unset: an ephemeral server)",
            f"must be a Prefect server that {where} can reach (not loopback)",
        )  # fmt: skip
