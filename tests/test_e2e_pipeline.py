"""End to end through real servers, with the real core: Prefect and MLflow on 127.0.0.1.

Starts the services the way ``make serve`` does (``deployments.services``; temporary Prefect
home, work dir and MLflow store, free ports), runs ``prefect deployment run
metapt/full-pipeline`` (smoke profile, the real SmolLM2 and data from the prepared assets) from a
shell whose only Prefect setting is the profile ``make serve`` wrote, checks the MLflow runs,
reruns it (stored whole: one cached MLflow run, a fraction of the time), then changes the
clustering's k (only cluster and its dependents recomputed). The services are always stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STAGES = {
    "ingest-pool",
    "ingest-tasks",
    "embed",
    "cluster",
    "ppt",
    "meta-pretrain",
    "meta-objective",
    "evaluate-cells",
    "report",
}


@pytest.fixture
def served(tmp_path: Path, assets_dir: Path):
    """Servers and the serve process under tmp_path; always stopped."""
    work = tmp_path / "work"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "MLFLOW_TRACKING", "METAPT_"))
    }
    # A fresh user Prefect home: `services start` writes PREFECT_API_URL into its profile.
    env.update(
        PREFECT_HOME=str(tmp_path / "user-prefect-home"),
        OMP_WAIT_POLICY="PASSIVE",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    overrides = [f"assets_dir={assets_dir}", f"work_dir={work}"]
    services = [sys.executable, "-m", "deployments.services"]
    try:
        subprocess.run(
            [
                *services,
                "start",
                "--work-dir",
                str(work),
                "--prefect-port",
                "0",
                "--mlflow-port",
                "0",
            ],
            env=env,
            cwd=REPO,
            check=True,
            timeout=400,
        )
        state = json.loads((work / "services" / "state.json").read_text())
        yield env, state, overrides, work
    finally:
        subprocess.run([*services, "stop", "--work-dir", str(work)], env=env, cwd=REPO, timeout=120)


def run_deployment(
    env: dict[str, str], overrides: list[str], deployment: str = "metapt/full-pipeline"
) -> float:
    """``prefect deployment run <deployment> ... --watch``; its wall time in seconds."""
    cmd = [
        str(BIN / "prefect"),
        "deployment",
        "run",
        deployment,
        "-p",
        "profile=smoke",
        "-p",
        f"overrides={json.dumps(overrides)}",
        "--watch",
    ]
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return seconds


def pipeline_runs(client, experiment_id: str) -> list:
    runs = client.search_runs(
        [experiment_id],
        "tags.`metapt.kind` = 'pipeline' and tags.`metapt.flow` = 'metapt'",
        order_by=["attributes.start_time ASC"],
    )
    return list(runs)


def children(client, experiment_id: str, parent_id: str) -> list:
    return list(
        client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'", max_results=1000
        )
    )


def test_full_pipeline_served_cached_and_partially_recomputed(served) -> None:
    from mlflow.tracking import MlflowClient

    env, state, overrides, work = served
    first = run_deployment(env, overrides)
    client = MlflowClient(tracking_uri=state["mlflow_url"])
    experiment = client.get_experiment_by_name("metapt")
    assert experiment is not None
    (parent,) = pipeline_runs(client, experiment.experiment_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"]
    assert parent.data.params["cluster.n_clusters"] == "3"
    runs = children(client, experiment.experiment_id, parent.info.run_id)
    stage_runs = [r for r in runs if r.data.tags.get("metapt.kind") == "stage"]
    assert {r.data.tags["metapt.stage"] for r in stage_runs} == STAGES
    assert all(r.data.tags["metapt.cached"] == "false" for r in stage_runs)
    cells = [r for r in runs if r.data.tags.get("metapt.kind") == "cell"]
    assert len(cells) == 3 * 1 * 2  # smoke: inits x shots x seeds (one task)
    for cell in cells:
        assert {"task", "method", "shots", "seed", "split_seed"} <= set(cell.data.params)
        assert 0.0 <= cell.data.metrics["test_accuracy"] <= 1.0
        assert "test_macro_f1" in cell.data.metrics
    assert {c.data.params["method"] for c in cells} == {"random", "ppt", "metapt_maml"}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config", "results"} <= artifacts
    # the meta-objective check: its CSV beside the report, its figures on the pipeline run
    results = {a.path for a in client.list_artifacts(parent.info.run_id, "results")}
    assert "results/meta_objective.csv" in results
    for figure in ("loss_after", "after_high", "trained", "diff_vs_ppt"):
        assert f"meta_objective/p0/metapt_maml/{figure}" in parent.data.metrics, figure

    second = run_deployment(env, overrides)
    parent2 = pipeline_runs(client, experiment.experiment_id)[-1]
    # stored whole: one cached pipeline run, as `metapt run` records it, linked to the first
    assert parent2.info.run_id != parent.info.run_id and parent2.info.status == "FINISHED"
    assert parent2.data.tags["metapt.cached"] == "true"
    assert parent2.data.tags["metapt.source_pipeline_run"] == parent.info.run_id
    assert parent2.data.tags["metapt.stages_served"] == str(len(STAGES) + 1)  # 2 groups
    assert children(client, experiment.experiment_id, parent2.info.run_id) == []
    answer = {k: v for k, v in parent.data.metrics.items() if k.startswith(("acc/", "f1/"))}
    assert answer and {k: parent2.data.metrics.get(k) for k in answer} == answer
    results2 = {a.path for a in client.list_artifacts(parent2.info.run_id, "results")}
    assert {"results/report.md", "results/meta_objective.csv"} <= results2
    # and on its Prefect flow run: the summary, the report and the link to the cached run
    query = {"artifacts": {"flow_run_id": {"any_": [parent2.data.tags["prefect.flow_run_id"]]}}}
    request = urllib.request.Request(
        f"{state['prefect_api_url']}/artifacts/filter",
        data=json.dumps(query).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
        keys = {a["key"]: a for a in json.loads(answer.read())}
    assert {"metapt-summary", "metapt-report", "metapt-mlflow-run"} <= set(keys)
    assert f"/runs/{parent2.info.run_id}" in keys["metapt-mlflow-run"]["data"]
    print(f"first run {first:.1f} s, cached run {second:.1f} s ({second / first:.2f} of the first)")
    assert second < 0.5 * first
    stored = {
        stage: len(list((work / "artifacts" / stage).glob("*/record.json"))) for stage in STAGES
    }
    assert stored == {**dict.fromkeys(STAGES, 1), "evaluate-cells": 2}  # nothing stored twice

    run_deployment(env, [*overrides, "cluster.n_clusters=2"])
    parent3 = pipeline_runs(client, experiment.experiment_id)[-1]
    stage_runs3 = [
        r
        for r in children(client, experiment.experiment_id, parent3.info.run_id)
        if r.data.tags.get("metapt.kind") == "stage"
    ]
    cached = {
        r.data.tags["metapt.stage"]: r.data.tags["metapt.cached"] == "true" for r in stage_runs3
    }
    assert cached == {
        "ingest-pool": True,
        "ingest-tasks": True,
        "embed": True,
        "cluster": False,
        "ppt": False,
        "meta-pretrain": False,
        "meta-objective": False,
        "evaluate-cells": False,
        "report": False,
    }
    stored = {
        stage: len(list((work / "artifacts" / stage).glob("*/record.json"))) for stage in STAGES
    }
    assert stored == {
        "ingest-pool": 1,
        "ingest-tasks": 1,
        "embed": 1,
        "cluster": 2,
        "ppt": 2,
        "meta-pretrain": 2,
        "meta-objective": 2,
        "evaluate-cells": 4,
        "report": 2,
    }
    report = subprocess.run(
        [sys.executable, "-m", "flows.cli", "report", parent3.info.run_id, "--profile", "smoke"],
        env={**env, "MLFLOW_TRACKING_URI": state["mlflow_url"]},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stderr
    assert "metapt_maml" in report.stdout
    # a step's own deployment runs the steps before it, every stage served from the store
    run_deployment(env, [*overrides, "cluster.n_clusters=2"], "metapt-cluster/cluster")
    (alone,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`metapt.kind` = 'pipeline' and tags.`metapt.flow` = 'metapt-cluster'",
    )
    served = children(client, experiment.experiment_id, alone.info.run_id)
    assert {r.data.tags["metapt.stage"] for r in served} == {
        "ingest-pool", "ingest-tasks", "embed", "cluster"
    }  # fmt: skip
    assert all(r.data.tags["metapt.cached"] == "true" for r in served)
