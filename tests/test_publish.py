"""The answer where people look: parent-run metrics, tags, description, HTML, Prefect rows."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
import pytest
from test_report_evidence import INITS, cells, config

from metapt_core.report import build_report
from metapt_core.specs import ReportSpec
from tasks import publish


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report of a planted effect (5 x 5 seeds, 100 rows, MetaPT +15 points)."""
    out = tmp_path_factory.mktemp("publish") / "report"
    untuned = [{"task": t, "init": i.value, "pretrain_seed": p, "accuracy": 0.5, "macro_f1": 0.4,
                "n": 100} for t in ("mr", "cr") for i in INITS for p in range(5)]  # fmt: skip
    build_report(cells(5, 5, 100, 0.15), {}, ReportSpec.of(config(200)), out, untuned)
    return out


def test_metrics_are_the_reports_numbers(report: Path) -> None:
    metrics = publish.answer_metrics(report)
    accuracy = pd.read_csv(report / "accuracy.csv")
    evidence = pd.read_csv(report / "evidence.csv")
    summary = pd.read_csv(report / "summary.csv")
    row = accuracy[(accuracy["task"] == "AVERAGE") & (accuracy["init"] == "metapt_maml")].iloc[0]
    assert metrics["acc/fewshot/k4/AVERAGE/metapt_maml"] == pytest.approx(row["mean"])
    assert metrics["acc_low/fewshot/k4/AVERAGE/metapt_maml"] == pytest.approx(row["low"])
    assert metrics["untuned/fewshot/k4/mr/ppt"] == pytest.approx(0.5)
    diff = evidence[(evidence["task"] == "mr") & (evidence["baseline"] == "random")].iloc[0]
    key = "fewshot/k4/mr/metapt_maml-vs-random"
    assert metrics[f"diff/{key}"] == pytest.approx(diff["mean_diff"])
    assert metrics[f"diff_high/{key}"] == pytest.approx(diff["high"])
    assert metrics[f"mdd/{key}"] == pytest.approx(diff["mdd"]) and diff["mdd"] > 0
    f1 = summary[(summary["task"] == "cr") & (summary["init"] == "random")].iloc[0]
    assert metrics["f1/fewshot/k4/cr/random"] == pytest.approx(f1["macro_f1_mean"])
    # every task (and the average) x init, every MetaPT pair: nothing silently dropped
    assert sum(k.startswith("acc/") for k in metrics) == len(accuracy) == 3 * len(INITS)
    assert sum(k.startswith("diff/") for k in metrics) == len(evidence) == 3 * 2


def test_tags_state_the_design_and_the_average_verdicts(report: Path) -> None:
    tags = publish.answer_tags(report)
    assert tags["metapt.design"].startswith("5 pre-training seeds x 5 few-shot seeds")
    verdict = tags["metapt.verdict.fewshot.k4.metapt_maml-vs-random"]
    assert verdict.startswith("better: +") and "95% interval" in verdict and "MDD" in verdict


def test_description_is_the_verdict_and_fits_a_tag(report: Path) -> None:
    text = publish.verdict_markdown(report)
    assert text.startswith("# MetaPT few-shot evaluation") and "## Verdict" in text
    assert "## Paired differences" not in text and "report.html" in text and "![" not in text
    short = publish.verdict_markdown(report, limit=600)
    assert len(short) <= 600 and short.endswith("(cut; the full report is attached)\n")


def test_html_is_self_contained(report: Path) -> None:
    md = (report / "report.md").read_text()
    pngs = re.findall(r"\]\(([^)]+\.png)\)", md)
    assert pngs[0] == "forest_fewshot_k4.png", "the report leads its plots with the forest plot"
    page = publish.render_html(md, report)
    assert "<table>" in page and "<h2>" in page
    assert not re.search(r'src="(?!data:)', page), "every image is inlined"
    first = re.search(r'src="data:image/png;base64,([^"]+)"', page)
    assert first and base64.b64decode(first.group(1)) == (report / pngs[0]).read_bytes()
    # a missing picture stays a link rather than failing the page
    assert publish.inline_images("![x](missing.png)", report) == "![x](missing.png)"


def test_summary_rows_and_run_url(report: Path) -> None:
    rows = publish.summary_rows(report)
    assert len(rows) == 3 * len(INITS)
    first = rows[0]
    assert set(first) == {"protocol", "shots", "task", "init", "accuracy", "low", "high",
                          "bounds", "macro_f1", "untuned"}  # fmt: skip
    assert first["bounds"] == "95% interval" and first["untuned"] == "50.0"
    assert publish.mlflow_run_url("sqlite:////x/mlflow.db", "1", "abc") == ""
    assert (
        publish.mlflow_run_url("http://127.0.0.1:5000/", "1", "abc")
        == "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )


def test_an_empty_folder_publishes_nothing(tmp_path: Path) -> None:
    assert publish.answer_metrics(tmp_path) == {} and publish.answer_tags(tmp_path) == {}
    assert publish.verdict_markdown(tmp_path) == "" and publish.summary_rows(tmp_path) == []
    assert publish.dataset_entries({"pool": {"path": ""}, "tasks": {}}) == []  # not the cwd


def test_experiment_opens_in_the_training_view(tmp_path: Path) -> None:
    from metapt_core.config import load_config
    from tasks.tracking import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, Tracker

    cfg = load_config("smoke", overrides=[f"work_dir={tmp_path / 'work'}"])
    tracker = Tracker.open(cfg)
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"
    # an experiment made without it (older runs, or by hand) gets it on the next run
    tracker.client.delete_experiment_tag(tracker.experiment_id, EXPERIMENT_KIND_TAG)
    again = Tracker.open(cfg)
    assert (
        again.client.get_experiment(again.experiment_id).tags[EXPERIMENT_KIND_TAG]
        == EXPERIMENT_KIND
    )


def test_datasets_are_logged_as_inputs_with_digests(report: Path, tmp_path: Path) -> None:
    import hashlib

    from metapt_core.config import load_config
    from tasks.tracking import Tracker

    pool, tasks, shards = tmp_path / "pool", tmp_path / "tasks", tmp_path / "cluster"
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label_id": [0, 1, 0]})
    for file in (pool / "pool.parquet", tasks / "mr" / "train.parquet",
                 tasks / "mr" / "test.parquet", shards / "shards" / "shard_000.parquet"):  # fmt: skip
        file.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(file)
    refs = {"pool": {"path": str(pool)}, "tasks": {"path": str(tasks)},
            "shards": {"path": str(shards)}, "embed": {"path": str(tmp_path)}}  # fmt: skip
    names = [(name, context) for name, context, _ in publish.dataset_entries(refs)]
    assert names == [("pool", "pre-training pool"), ("shards/shard_000", "auxiliary tasks (clusters)"),
                     ("tasks/mr/test", "evaluation"), ("tasks/mr/train", "training")]  # fmt: skip
    cfg = load_config("smoke", overrides=[f"work_dir={tmp_path / 'work'}"])
    tracker = Tracker.open(cfg)
    run_id = tracker.start_run("inputs", parent_run_id="")
    assert publish.log_dataset_inputs(tracker, run_id, refs) == 4
    logged = {d.dataset.name: d for d in tracker.client.get_run(run_id).inputs.dataset_inputs}
    digest = hashlib.sha256((tasks / "mr" / "test.parquet").read_bytes()).hexdigest()
    assert logged["tasks/mr/test"].dataset.digest == digest[:16]
    assert json_of(logged["pool"].dataset.profile)["num_rows"] == 3
    assert {t.value for t in logged["tasks/mr/train"].tags} == {"training"}


def json_of(text: str) -> dict:
    import json

    return dict(json.loads(text))


def test_pretraining_curves_are_step_metrics(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from metapt_core.config import load_config
    from tasks.tracking import Tracker

    folder = tmp_path / "out"
    folder.mkdir()
    history = [{"step": 0, "unseen_loss": 1.2, "val_loss": 1.4},
               {"step": 1, "support_loss": 1.1, "query_loss": 1.0, "query_loss_0": 1.3},
               {"step": 2, "support_loss": 0.9, "query_loss": 0.8, "query_loss_0": 1.2,
                "unseen_loss": 1.0, "val_loss": float("nan"), "kept": True}]  # fmt: skip
    (folder / "history.json").write_text(json.dumps(history))
    tracker = Tracker.open(load_config("smoke", overrides=[f"work_dir={tmp_path / 'work'}"]))
    run_id = tracker.start_run("ppt-p0", parent_run_id="")
    outcome = SimpleNamespace(ref=SimpleNamespace(path=str(folder)), run_id=run_id)
    assert publish.log_history(tracker, outcome) == 2 + 3 + 4  # the NaN and the flag left out
    query = tracker.client.get_metric_history(run_id, "curve/query_loss")
    assert [(m.step, m.value) for m in sorted(query, key=lambda m: m.step)] == [(1, 1.0), (2, 0.8)]
    unseen = tracker.client.get_metric_history(run_id, "curve/unseen_loss")
    assert sorted(m.step for m in unseen) == [0, 2]


def test_cluster_legend_names_terms_size_and_class_mix() -> None:
    from metapt_core.clustering.diagnostics import cluster_legend

    sizes = pd.DataFrame([{"cluster_id": 0, "rows": 10, "neg": 1, "pos": 3},
                          {"cluster_id": 2, "rows": 5, "neg": 5, "pos": 0}])  # fmt: skip
    legend = cluster_legend(sizes, {0: ["rain", "cold", "wet", "grey"]})
    assert legend == {
        0: "0: rain, cold, wet (n=10; neg 25%, pos 75%)",
        2: "2 (n=5; neg 100%, pos 0%)",
    }


def test_pretraining_curves_picture_on_the_pipeline_run(tmp_path: Path) -> None:
    import json

    from metapt_core.config import load_config
    from tasks.tracking import Tracker

    refs = {}
    for name, history in (("ppt@0", [{"step": 0, "unseen_loss": 1.2}, {"step": 1, "loss": 1.0}]),
                          ("metapt_maml@0", [{"step": 0, "unseen_loss": 1.3},
                                             {"step": 1, "query_loss": 1.1}])):  # fmt: skip
        folder = tmp_path / name / "out"
        folder.mkdir(parents=True)
        (folder / "history.json").write_text(json.dumps(history))
        refs[f"prompt:{name}"] = {"path": str(folder)}
    refs["prompt:gone@0"] = {"path": str(tmp_path / "missing")}
    tracker = Tracker.open(load_config("smoke", overrides=[f"work_dir={tmp_path / 'work'}"]))
    run_id = tracker.start_run("metapt", parent_run_id="")
    assert publish.log_pretraining_curves(tracker, run_id, refs)
    (logged,) = tracker.client.list_artifacts(run_id, "pretraining")
    assert logged.path == "pretraining/curves.png" and logged.file_size > 10_000
    assert not publish.log_pretraining_curves(tracker, run_id, {"prompt:x": {"path": ""}})
