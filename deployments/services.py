"""Start and stop the local services: Prefect server, MLflow server, the deployments' serve process.

    python -m deployments.services start [--work-dir .metapt]   # make serve
    python -m deployments.services stop                         # make stop
    python -m deployments.services ui [--open]                  # make ui

Everything binds to 127.0.0.1; the databases (SQLite) and artifacts live under the work dir;
the pids are recorded in ``<work_dir>/services/state.json`` and ``stop`` signals exactly those
(each was started as its own process group, so its worker children go with it). ``start`` also
sets ``PREFECT_API_URL`` in the active Prefect profile, so that a plain
``prefect deployment run metapt/full-pipeline`` works from a new shell; ``stop`` unsets it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

import deployments  # noqa: F401  (environment defaults)
from flows.env import WORK_DIR_ENV

HOST = "127.0.0.1"
# MLflow 3.17's UI opens in its GenAI view unless the URL asks for the model-training view.
TRAINING_VIEW = "?workflowType=machine_learning"


def training_view_url(mlflow_url: str, experiment: str = "metapt") -> str:
    """The experiment's runs table in MLflow's model-training view (the experiments list while
    the experiment does not exist yet)."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"experiment_name": experiment})
    try:
        with urllib.request.urlopen(  # noqa: S310 (the local server)
            f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=2
        ) as answer:
            experiment_id = json.loads(answer.read())["experiment"]["experiment_id"]
    except (OSError, ValueError, KeyError):
        return f"{mlflow_url}/#/experiments{TRAINING_VIEW}"
    return f"{mlflow_url}/#/experiments/{experiment_id}{TRAINING_VIEW}"


REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def state_file(work_dir: Path) -> Path:
    return work_dir / "services" / "state.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _ours(entry: dict[str, Any]) -> bool:
    """True if the recorded pid is still the process we started (not a reused pid)."""
    pid = int(entry["pid"])
    if not _alive(pid):
        return False
    cmdline = _cmdline(pid)
    return not cmdline or entry["marker"] in cmdline


def _spawn(name: str, cmd: list[str], env: dict[str, str], logs: Path) -> dict[str, Any]:
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stop signals the group, not us
        )
    return {"pid": proc.pid, "cmd": cmd, "marker": " ".join(cmd[1:3])}


def _wait_http(url: str, timeout_s: float, entry: dict[str, Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(int(entry["pid"])):
            raise RuntimeError(f"{entry['cmd'][0]} exited; see its log under services/logs")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s")


def _prefect(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "prefect"), *args],
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        check=False,
    )


def start(
    work_dir: Path, prefect_port: int = 4200, mlflow_port: int = 5000, timeout_s: float = 180
) -> dict[str, Any]:
    """Start the three services (unless already running) and point the Prefect profile at them."""
    work_dir = work_dir.expanduser().resolve()
    state_path = state_file(work_dir)
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if all(_ours(e) for e in state["processes"].values()):
            print(f"already running: Prefect {state['prefect_url']}  MLflow {state['mlflow_url']}")
            return dict(state)
        stop(work_dir)
    logs = work_dir / "services" / "logs"
    prefect_port, mlflow_port = free_port(prefect_port), free_port(mlflow_port)
    api_url = f"http://{HOST}:{prefect_port}/api"
    mlflow_url = f"http://{HOST}:{mlflow_port}"
    (work_dir / "mlflow" / "artifacts").mkdir(parents=True, exist_ok=True)
    base = os.environ.copy()
    for key in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        base.pop(key, None)
    processes: dict[str, dict[str, Any]] = {}
    state = {
        "work_dir": str(work_dir),
        "prefect_url": api_url.removesuffix("/api"),
        "prefect_api_url": api_url,
        "mlflow_url": mlflow_url,
        "processes": processes,
        "profile_set": False,
    }
    try:
        server_env = {
            **base,
            "PREFECT_HOME": str(work_dir / "prefect-server"),
            "PREFECT_SERVER_API_HOST": HOST,
            # the UI's API address: without it the UI calls port 4200 whatever --port says
            "PREFECT_SERVER_UI_API_URL": api_url,
        }
        processes["prefect-server"] = _spawn(
            "prefect-server",
            [str(BIN / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
            server_env,
            logs,
        )
        mlflow_env = {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        processes["mlflow-server"] = _spawn(
            "mlflow-server",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{work_dir / 'mlflow' / 'mlflow.db'}",
                "--artifacts-destination",
                str(work_dir / "mlflow" / "artifacts"),
                "--host",
                HOST,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            mlflow_env,
            logs,
        )
        atomic_state(state_path, state)
        _wait_http(f"{api_url}/health", timeout_s, processes["prefect-server"])
        _wait_http(f"{mlflow_url}/health", timeout_s, processes["mlflow-server"])
        serve_env = {
            **base,
            "PREFECT_API_URL": api_url,
            "PREFECT_HOME": str(work_dir / "prefect-runner"),
            "MLFLOW_TRACKING_URI": mlflow_url,
            WORK_DIR_ENV: str(work_dir),
            "PREFECT_RUNNER_POLL_FREQUENCY": os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY", "2"),
        }
        processes["serve"] = _spawn(
            "serve", [sys.executable, "-m", "deployments.serve"], serve_env, logs
        )
        atomic_state(state_path, state)
        _wait_http(
            f"{api_url}/deployments/name/metapt/full-pipeline", timeout_s, processes["serve"]
        )
        result = _prefect(["config", "set", f"PREFECT_API_URL={api_url}"])
        if result.returncode != 0:
            raise RuntimeError(f"prefect config set failed: {result.stderr.strip()}")
        state["profile_set"] = True
        atomic_state(state_path, state)
    except BaseException:
        stop(work_dir)
        raise
    print(f"Prefect UI  {state['prefect_url']}\nMLflow UI   {training_view_url(mlflow_url)}")
    print("run:  prefect deployment run metapt/full-pipeline -p profile=smoke --watch")
    return state


def atomic_state(path: Path, state: dict[str, Any]) -> None:
    from metapt_core.store import atomic_write_json

    atomic_write_json(path, state)


def stop(work_dir: Path, timeout_s: float = 30) -> list[str]:
    """Stop the recorded processes (SIGTERM to each group, SIGKILL after ``timeout_s``)."""
    work_dir = work_dir.expanduser().resolve()
    path = state_file(work_dir)
    if not path.is_file():
        print("nothing running")
        return []
    state = json.loads(path.read_text())
    stopped = []
    # the serve process first, so it does not lose its server mid-run
    for name in ("serve", "mlflow-server", "prefect-server"):
        entry = state["processes"].get(name)
        if not entry or not _ours(entry):
            continue
        pid = int(entry["pid"])
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout_s
        while _alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # what is left of the group (workers, children)
        _reap(pid)
        stopped.append(name)
    if state.get("profile_set"):
        current = _prefect(["config", "view", "--show-sources"]).stdout
        if state["prefect_api_url"] in current:
            _prefect(["config", "unset", "PREFECT_API_URL", "-y"])
    path.unlink(missing_ok=True)
    print(f"stopped: {', '.join(stopped) or 'nothing'}")
    return stopped


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def ui(work_dir: Path, open_browser: bool = False) -> None:
    """Print (and optionally open) the UIs of the running services."""
    path = state_file(work_dir.expanduser().resolve())
    if not path.is_file():
        print(
            "not running: start with `make serve`.\n"
            f"Local runs are tracked in {work_dir.expanduser().resolve() / 'mlflow' / 'mlflow.db'}: "
            f"mlflow ui --backend-store-uri sqlite:///{work_dir.expanduser().resolve() / 'mlflow' / 'mlflow.db'} --host 127.0.0.1"
        )
        return
    state = json.loads(path.read_text())
    mlflow_page = training_view_url(state["mlflow_url"])
    print(f"Prefect UI  {state['prefect_url']}\nMLflow UI   {mlflow_page}")
    if open_browser:
        webbrowser.open(state["prefect_url"])
        webbrowser.open(mlflow_page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.services",
        description=__doc__.splitlines()[0] if __doc__ else "",
    )
    parser.add_argument("command", choices=["start", "stop", "ui"])
    parser.add_argument("--work-dir", default=os.environ.get(WORK_DIR_ENV, ".metapt"))
    parser.add_argument(
        "--prefect-port", type=int, default=int(os.environ.get("METAPT_PREFECT_PORT", "4200"))
    )
    parser.add_argument(
        "--mlflow-port", type=int, default=int(os.environ.get("METAPT_MLFLOW_PORT", "5000"))
    )
    parser.add_argument("--open", action="store_true", help="ui: open the UIs in a browser")
    args = parser.parse_args(argv)
    work_dir = Path(args.work_dir)
    if args.command == "start":
        start(work_dir, args.prefect_port, args.mlflow_port)
    elif args.command == "stop":
        stop(work_dir)
    else:
        ui(work_dir, args.open)
    return 0


if __name__ == "__main__":
    sys.exit(main())
