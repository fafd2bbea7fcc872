"""A fully cached run through the served deployment against the same run through ``metapt run``.

    .venv/bin/python benchmarks/bench_deployment.py --mode quick    # smoke profile (~3 min)

Starts the services as ``make serve`` does (``deployments.services``: a Prefect server, an
MLflow server and the serve process, on free loopback ports, under a temporary work folder),
runs ``prefect deployment run metapt/full-pipeline -p profile=smoke ... --watch`` once cold,
then alternates (A B A B ...) the fully cached deployment run with the fully cached
``metapt run --profile smoke`` on the same store. A deployment run is timed two ways: the
Prefect flow run's submission (its creation) to its end, read from the API, and the whole
``prefect deployment run --watch`` command as a user waits for it; ``metapt run`` from process
start to exit. The services are always stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ASSETS_DIR, REPO, Row, bench_parser, emit, log, median

BIN = Path(sys.executable).parent
SAMPLES = {"tiny": 2, "quick": 3, "full": 5}


def _environment(home: Path) -> dict[str, str]:
    """The shell of a new user: no Prefect, MLflow or metapt settings, a fresh Prefect home."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "METAPT_"))
    }
    env.update(PREFECT_HOME=str(home), OMP_WAIT_POLICY="PASSIVE")
    return env


def _run(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds and output of one command (raises with its last lines on failure)."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"{' '.join(command[:4])} failed ({done.returncode}):\n{tail}")
    return seconds, done.stdout + done.stderr


def deployment_run(env: dict[str, str], overrides: list[str], api_url: str) -> tuple[float, float]:
    """``(submission to end, whole command)`` in seconds for one full-pipeline deployment run."""
    command = [
        str(BIN / "prefect"), "deployment", "run", "metapt/full-pipeline",
        "-p", "profile=smoke", "-p", f"overrides={json.dumps(overrides)}", "--watch",
    ]  # fmt: skip
    wall, output = _run(command, env)
    flow_run_id = next(
        line.split("UUID:")[-1].strip() for line in output.splitlines() if "UUID:" in line
    )
    code = (
        "import asyncio, sys\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as client:\n"
        f"        run = await client.read_flow_run('{flow_run_id}')\n"
        "        print((run.end_time - run.created).total_seconds())\n"
        "asyncio.run(main())\n"
    )
    _, seconds = _run([sys.executable, "-c", code], {**env, "PREFECT_API_URL": api_url})
    return float(seconds.strip().splitlines()[-1]), wall


def cli_run(env: dict[str, str], work: Path) -> float:
    """Wall seconds of one ``metapt run --profile smoke`` on the services' store."""
    command = [
        sys.executable, "-m", "flows.cli", "run", "--profile", "smoke",
        "--set", f"work_dir={work}", "--set", f"assets_dir={ASSETS_DIR}",
    ]  # fmt: skip
    seconds, output = _run(command, env)
    if "served from the store" not in output:
        raise RuntimeError("metapt run was expected to be served whole from the store")
    return seconds


def run(mode: str) -> list[Row]:
    samples = SAMPLES[mode]
    services = [sys.executable, "-m", "deployments.services"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        env = _environment(Path(tmp) / "user-prefect-home")
        ports = ["--prefect-port", "0", "--mlflow-port", "0"]
        _run([*services, "start", "--work-dir", str(work), *ports], env)
        try:
            state = json.loads((work / "services" / "state.json").read_text())
            api_url = state["prefect_api_url"]
            overrides = [f"assets_dir={ASSETS_DIR}", f"work_dir={work}"]
            cold, cold_wall = deployment_run(env, overrides, api_url)
            log(f"deployment: cold {cold:.1f} s from submission ({cold_wall:.1f} s command)")
            served: list[float] = []
            walls: list[float] = []
            cli: list[float] = []
            for index in range(samples):
                seconds, wall = deployment_run(env, overrides, api_url)
                served.append(seconds)
                walls.append(wall)
                cli.append(cli_run(env, work))
                log(
                    f"deployment: cached {index + 1}/{samples}: {seconds:.1f} s from submission "
                    f"({wall:.1f} s command); metapt run {cli[-1]:.1f} s"
                )
        finally:
            subprocess.run([*services, "stop", "--work-dir", str(work)], cwd=REPO, env=env)
    note = f"smoke profile, median of {samples}"
    return [
        # the target is absolute: seconds, so the ratio is taken against 1 s
        Row("10 deployment", "cached full-pipeline run, submission to end", median(served), 1.0,
            "s", "<=12", f"{note}; Prefect flow run created -> end"),
        Row("10 deployment", "cached deployment run vs cached metapt run", median(walls),
            median(cli), "s", "", f"{note}; whole commands as a user waits for them"),
        Row("10 deployment", "cached deployment run vs its cold run", median(served), cold, "s",
            "", f"{note}; both from submission"),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "10. cached deployment run")


if __name__ == "__main__":
    main()
