"""Environment defaults for every entry point: telemetry off, offline, loopback only.

Imported first by ``flows`` (hence by the ``metapt`` command), by ``deployments``, by the tests'
``conftest`` and the benchmarks; every value is a default (``os.environ.setdefault``), so a
user's own setting wins. The Makefile exports the same list (``python3 flows/env.py`` prints the
``KEY=VALUE`` pairs the environment does not set yet), so the one list is this one.
"""

from __future__ import annotations

import logging
import os
import tomllib
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # Spinning OpenMP workers stall torch 10x on a small machine when anything else runs
    # (the Prefect server, MLflow); must be set before torch is imported.
    "OMP_WAIT_POLICY": "PASSIVE",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    # The core's own log lines (training steps, "resuming from step N") reach the terminal and UI.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "metapt_core",
}
# Set by deployments.services for the serve process; a default for the work_dir setting.
WORK_DIR_ENV = "METAPT_WORK_DIR"


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)


_home_lock: list[int] = []  # the open lock file of the shared home, held until exit


def _private_home(shared: Path) -> Path:
    """``shared`` if no other run on this work dir uses it, else a temporary home beside it.

    Two temporary servers migrating one SQLite database at once fail ("index already
    exists"), so a concurrent run gets its own database, removed when the run exits.
    """
    import atexit
    import shutil
    import tempfile

    from metapt_core.locks import try_acquire

    shared.mkdir(parents=True, exist_ok=True)  # sqlite cannot create the database's folder
    fd = try_acquire(shared / "home.lock")
    if fd is None:
        home = Path(tempfile.mkdtemp(prefix="concurrent-", dir=shared))
        # registered before prefect's own exit hook, so it runs after the server has stopped
        atexit.register(shutil.rmtree, home, True)
        return home
    _home_lock.append(fd)
    return shared


def core_logging() -> None:
    """Let the core's INFO lines through: Prefect attaches its handlers to the extra loggers but
    leaves their level unset (WARNING, from the root logger)."""
    core = logging.getLogger("metapt_core")
    if core.level == logging.NOTSET:
        core.setLevel(logging.INFO)


def prefect_api_configured() -> bool:
    """True if PREFECT_API_URL is set in the environment or in the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml")).expanduser()
    try:
        data = tomllib.loads(profiles.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def use_ephemeral_prefect(work_dir: Path) -> bool:
    """Without a configured API, run Prefect against a temporary local server whose home is
    ``<work_dir>/prefect`` (call before prefect is imported). Returns True if it did so."""
    if prefect_api_configured():
        return False
    home = _private_home(work_dir / "prefect")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    return True


if __name__ == "__main__":  # for the Makefile: the defaults this environment lacks
    print(" ".join(f"{k}={v}" for k, v in DEFAULTS.items() if k not in os.environ))
else:
    apply_defaults()
    core_logging()
