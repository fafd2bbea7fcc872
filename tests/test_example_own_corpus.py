"""The own-corpus example (``examples/own-corpus/``) through the real pipeline.

``metapt run --profile smoke --config examples/own-corpus/config.yaml``, as the README tells a
newcomer to run it (from the repository root, so the config's relative paths resolve), with a
temporary work dir: its ephemeral Prefect server and SQLite MLflow store live there. The pool is
the example's CSV, row for row; each task's splits come from its own CSV; the report and the
MLflow runs are about the example's tasks, not the profile's.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from smoke_runs import REPO, isolated_env, leftovers, results_table, run

pytestmark = pytest.mark.slow

EXAMPLE = REPO / "examples" / "own-corpus"
CONFIG = "examples/own-corpus/config.yaml"  # relative, as in the README's command
# task -> (file, text column, label column, raw label -> class), as config.yaml reads them
TASKS = {
    "reviews": ("reviews.csv", "review", "sentiment", {"neg": "negative", "pos": "positive"}),
    "tickets": (
        "tickets.csv",
        "message",
        "queue",
        {"billing": "billing", "technical": "technical"},
    ),
}
CLASSES = {"reviews": ["negative", "positive"], "tickets": ["billing", "technical"]}
MAX_TEST = 16  # the config's tasks[*].max_test
TEST_FRACTION = 0.3  # TargetTaskConfig's default, which the config keeps


def read_csv(name: str) -> list[dict[str, str]]:
    with open(EXAMPLE / name, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def rows_of(path: Path) -> list[tuple[str, str]]:
    table = pq.read_table(path, columns=["text", "label"]).to_pydict()
    return list(zip(table["text"], table["label"], strict=True))


def one(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_own_corpus_example_runs_end_to_end(tmp_path: Path, assets_dir: Path) -> None:
    work = tmp_path / "work"
    result = run(work, assets_dir, isolated_env(tmp_path / "home"), tmp_path / "run.log",
                 "--config", CONFIG)  # fmt: skip
    assert result.returncode == 0, result.output[-4000:]
    artifacts = work / "artifacts"

    # The pool is pool.csv: every row, its text and its label (nothing cleaned away).
    pool_csv = [(r["text"], r["label"]) for r in read_csv("pool.csv")]
    pool = rows_of(one(list((artifacts / "ingest-pool").rglob("pool.parquet"))))
    assert len(pool) == len(pool_csv) == 180
    assert sorted(pool) == sorted(pool_csv)

    # Each task's train and test rows come from its own CSV, disjoint, the test split held out
    # per class and sampled down to max_test; none of them is in the pool.
    tasks_dir = one([p.parent for p in (artifacts / "ingest-tasks").rglob("tasks.json")])
    summary = json.loads((tasks_dir / "tasks.json").read_text())
    assert set(summary) == set(TASKS)
    pool_texts = {text for text, _ in pool}
    for task, (file, text_col, label_col, label_map) in TASKS.items():
        source = {(r[text_col], label_map[r[label_col]]) for r in read_csv(file)}
        train = rows_of(tasks_dir / task / "train.parquet")
        test = rows_of(tasks_dir / task / "test.parquet")
        assert set(train) <= source and set(test) <= source, task
        assert not {t for t, _ in train} & {t for t, _ in test}, task
        assert not {t for t, _ in test} & pool_texts, task
        per_class = {label: sum(1 for _, lab in source if lab == label) for _, label in source}
        held_out = sum(round(n * TEST_FRACTION) for n in per_class.values())
        assert len(train) == len(source) - held_out, task
        assert len(test) == MAX_TEST, task
        assert {label for _, label in test} == set(CLASSES[task]), task  # stratified
        assert summary[task]["classes"] == CLASSES[task], task

    # The report and the grid are about the example's tasks.
    table = results_table(work)
    assert {r["task"] for r in table} == set(TASKS)  # the profile's task (mr) is replaced
    assert {r["init"] for r in table} == {"random", "ppt", "metapt_maml"}  # the smoke grid
    report_md = one(list((artifacts / "report").rglob("report.md"))).read_text()
    for task in TASKS:
        assert task in report_md, task

    # MLflow (SQLite under the work dir): one pipeline run, its per-task metrics, a cell per
    # (task, init, seed).
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metapt")
    assert experiment is not None
    (parent,) = client.search_runs(
        [experiment.experiment_id],
        "tags.`metapt.kind` = 'pipeline'",
    )
    assert parent.info.status == "FINISHED"
    for task in TASKS:
        assert f"acc/fewshot/k2/{task}/metapt_maml" in parent.data.metrics, task
    cells = [
        r
        for r in client.search_runs(
            [experiment.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=1000,
        )
        if r.data.tags.get("metapt.kind") == "cell"
    ]
    assert len(cells) == len(TASKS) * 3 * 2  # tasks x smoke's inits x few-shot seeds
    assert {c.data.params["task"] for c in cells} == set(TASKS)
    assert leftovers(work) == []
