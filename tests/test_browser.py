"""The UIs as a user opens them: real servers (`make serve`), the smoke pipeline run through its
deployment, then the MLflow run page and the Prefect flow run and artifact pages rendered in
headless Chromium (Debian's `chromium`; `make test` installs it where it can).

Each page is rendered twice: once to a screenshot saved under the test's output (look at them),
once as the DOM after the single-page app has run, which the assertions read.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from test_e2e_pipeline import pipeline_runs, run_deployment, served  # noqa: F401 (fixture)

from deployments.services import training_view_url
from tasks.publish import TRAINING_VIEW

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1600,1100", "--virtual-time-budget=20000",
]  # fmt: skip


def render(url: str, out: Path, profile: Path) -> str:
    """Screenshot ``url`` to ``out`` and return its DOM after the page's scripts have run."""
    base = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}"]
    subprocess.run([*base, f"--screenshot={out}", url], capture_output=True, timeout=120)
    dom = subprocess.run([*base, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert out.is_file() and out.stat().st_size > 10_000, f"no screenshot of {url}"
    return dom.stdout


def prefect_artifacts(api_url: str, flow_run_id: str) -> list[dict]:
    body = json.dumps({"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}).encode()
    request = urllib.request.Request(
        f"{api_url}/artifacts/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
        return list(json.loads(answer.read()))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (apt-get install chromium, as root)")
def test_run_pages_in_a_real_browser(served, tmp_path: Path) -> None:  # noqa: F811
    from mlflow.tracking import MlflowClient

    env, state, overrides, work = served
    run_deployment(env, overrides)
    client = MlflowClient(tracking_uri=state["mlflow_url"])
    experiment = client.get_experiment_by_name("metapt")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = pipeline_runs(client, experiment.experiment_id)
    run_id, flow_run_id = parent.info.run_id, parent.data.tags["prefect.flow_run_id"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"screenshots: {shots}")

    # MLflow: the runs table (not the GenAI view) and the pipeline run carrying the answer
    experiment_url = f"{state['mlflow_url']}/#/experiments/{experiment.experiment_id}"
    assert training_view_url(state["mlflow_url"]) == f"{experiment_url}{TRAINING_VIEW}"  # make ui
    table = render(f"{experiment_url}{TRAINING_VIEW}", shots / "mlflow-runs.png", tmp_path / "c1")
    assert parent.info.run_name in table and "Run Name" in table and "Evaluation runs" not in table
    page = render(
        f"{experiment_url}/runs/{run_id}{TRAINING_VIEW}", shots / "mlflow-run.png", tmp_path / "c2"
    )
    assert parent.info.run_name in page
    metrics = re.search(r"Metrics \((\d+)\)", page)
    assert metrics and int(metrics.group(1)) >= 10, "the parent run lists its metrics"
    assert "MetaPT few-shot evaluation" in page, "the verdict is the run's description"
    # the first dataset input by name and digest, the others behind "+N"
    assert re.search(r"pool \([0-9a-f]{16}\)", page), "the datasets are listed as inputs"
    inputs = {d.dataset.name for d in client.get_run(run_id).inputs.dataset_inputs}
    assert {"pool", "tasks/mr/train", "tasks/mr/test"} <= inputs
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert {m.name for m in models} == {"ppt-p0", "meta-pretrain-maml-p0"}, "prompts as models"
    assert all(str(m.status) == "READY" and m.source_run_id for m in models)
    (maml,) = client.search_runs(
        [experiment.experiment_id],
        f"tags.`mlflow.parentRunId` = '{run_id}' and tags.`metapt.stage` = 'meta-pretrain'",
    )
    curve = client.get_metric_history(maml.info.run_id, "curve/query_loss")
    assert len({m.step for m in curve}) >= 2, "meta-training curves are step metrics"
    # the learned prompt as a product, from its stage run: adapter, card, its own scores
    exported = tmp_path / "exported"
    command = [sys.executable, "-m", "flows.cli", "prompts", "export", maml.info.run_id,
               "--out", str(exported), "--profile", "smoke", *[a for o in overrides
               for a in ("--set", o)]]  # fmt: skip
    done = subprocess.run(command, env={**env, "MLFLOW_TRACKING_URI": state["mlflow_url"]},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    card = (exported / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "## Evaluation of this prompt" in card and "| fewshot | 2 | mr |" in card
    assert json.loads((exported / "adapter_config.json").read_text())["peft_version"]
    clusters = {a.path for a in client.list_artifacts(run_id, "clusters")}
    assert {"clusters/umap_2d.png", "clusters/top_terms.md"} <= clusters
    assert [a.path for a in client.list_artifacts(run_id, "pretraining")] == [
        "pretraining/curves.png"
    ]
    artifacts = {a.path for a in client.list_artifacts(run_id, "results")}
    assert {"results/report.html", "results/report.md"} <= artifacts
    html = Path(client.download_artifacts(run_id, "results/report.html", str(tmp_path / "dl")))
    report = render(html.as_uri(), shots / "report-html.png", tmp_path / "c3")
    images = re.findall(r'<img[^>]+src="([^"]{0,40})', report)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)

    # Prefect: the flow run (its timeline marks the artifacts) and the artifacts' own pages
    prefect = state["prefect_url"]
    by_key = {a["key"]: a for a in prefect_artifacts(state["prefect_api_url"], flow_run_id)}
    assert {"metapt-summary", "metapt-report", "metapt-mlflow-run"} <= set(by_key)
    assert f"/runs/{run_id}" in by_key["metapt-mlflow-run"]["data"]
    flow_page = render(
        f"{prefect}/runs/flow-run/{flow_run_id}", shots / "prefect-flow-run.png", tmp_path / "c4"
    )
    assert "Completed" in flow_page and "Artifacts" in flow_page
    table = render(
        f"{prefect}/artifacts/artifact/{by_key['metapt-summary']['id']}",
        shots / "prefect-summary.png",
        tmp_path / "c5",
    )
    assert "metapt_maml" in table and "AVERAGE" in table, "the summary table, not per-cell rows"
    markdown = render(
        f"{prefect}/artifacts/artifact/{by_key['metapt-report']['id']}",
        shots / "prefect-report.png",
        tmp_path / "c6",
    )
    assert "MetaPT few-shot evaluation" in markdown
    images = re.findall(r'<img[^>]+src="([^"]{0,40})', markdown)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
