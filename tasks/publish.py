"""The answer where people look: the MLflow parent run, a self-contained HTML report, Prefect.

A report folder (:func:`metapt_core.report.build_report`) holds ``accuracy.csv`` (mean test
accuracy per protocol, shots, task and init, with nested bounds), ``summary.csv`` (macro-F1
among others), ``evidence.csv`` (paired differences ``method - baseline`` with bounds, MDD and
verdict) and ``report.md`` with its PNG plots. From it this module derives:

- :func:`answer_metrics`: the parent run's metrics, one name per number, so two pipeline runs
  (two levers, two studies) sort and compare in the MLflow runs table and compare view;
- :func:`answer_tags`: the design (units per level) and the headline verdict as tags;
- :func:`verdict_markdown`: the run's description (``mlflow.note.content``, rendered Markdown);
- :func:`inline_images` / :func:`render_html`: the report with its images inlined, which the
  MLflow artifact viewer and the Prefect markdown artifact both render where they are opened.

Nothing here imports MLflow or Prefect at module level: :func:`publish` takes the tracker.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

DESCRIPTION_TAG = "mlflow.note.content"
HTML_NAME = "report.html"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+\.png)\)")
_MAX_TAG = 5000


def _read(root: Path, name: str) -> pd.DataFrame:
    file = root / name
    if not file.is_file() or file.stat().st_size == 0:
        return pd.DataFrame()
    try:
        return pd.read_csv(file)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metric_key(*parts: Any) -> str:
    """A metric name from its parts: ``acc/fewshot/k16/mr/ppt`` (MLflow allows ``/``)."""
    return "/".join(re.sub(r"[^0-9A-Za-z_.\- ]", "_", str(p)) for p in parts)


def answer_metrics(report_dir: Path) -> dict[str, float]:
    """The answer as metrics (fractions, not percent).

    - ``acc/<protocol>/k<shots>/<task>/<init>`` mean test accuracy, with ``acc_low/...`` and
      ``acc_high/...`` its nested bounds (``accuracy.csv``); ``task`` includes ``AVERAGE``;
    - ``untuned/<protocol>/k<shots>/<task>/<init>`` the same prompt's accuracy with no tuning;
    - ``f1/<protocol>/k<shots>/<task>/<init>`` mean macro-F1 (``summary.csv``);
    - ``diff/<protocol>/k<shots>/<task>/<method>-vs-<baseline>`` the paired difference, with
      ``diff_low``, ``diff_high`` and ``mdd`` (``evidence.csv``);
    - ``meta_objective/p<seed>/<init>/<figure>``: the meta-objective check
      (``meta_objective.csv``: ``loss_before``, ``loss_after`` and its bounds, ``diff_vs_ppt``
      and its bounds, ``vs_prior`` (minus the support-prior reference) and its bounds,
      ``trained``, ``beats_ppt`` and ``beats_prior`` as 0/1).
    """
    metrics: dict[str, float] = {}
    objective = _read(report_dir, "meta_objective.csv")
    for row in objective.to_dict("records"):
        seed_init = (f"p{int(row['pretrain_seed'])}", row["init"])
        for column in ("loss_before", "loss_after", "after_low", "after_high", "diff_vs_ppt",
                       "diff_low", "diff_high", "vs_prior", "vs_prior_low", "vs_prior_high",
                       "trained", "beats_ppt", "beats_prior"):  # fmt: skip
            value = row.get(column)
            if isinstance(value, str):
                value = {"true": 1.0, "false": 0.0}.get(value.strip().lower())
            elif isinstance(value, bool):
                value = float(value)
            number = _finite(value)
            if number is not None:
                metrics[metric_key("meta_objective", *seed_init, column)] = number
    accuracy = _read(report_dir, "accuracy.csv")
    for row in accuracy.to_dict("records"):
        where = (row["protocol"], f"k{int(row['shots'])}", row["task"], row["init"])
        for name, column in (("acc", "mean"), ("acc_low", "low"), ("acc_high", "high"),
                             ("untuned", "untuned")):  # fmt: skip
            value = _finite(row.get(column))
            if value is not None:
                metrics[metric_key(name, *where)] = value
    summary = _read(report_dir, "summary.csv")
    for row in summary.to_dict("records"):
        value = _finite(row.get("macro_f1_mean"))
        if value is not None:
            where = (row["protocol"], f"k{int(row['shots'])}", row["task"], row["init"])
            metrics[metric_key("f1", *where)] = value
            if accuracy.empty:  # cells without per-row scores: the mean over units
                acc = _finite(row.get("accuracy_mean"))
                if acc is not None:
                    metrics[metric_key("acc", *where)] = acc
    evidence = _read(report_dir, "evidence.csv")
    for row in evidence.to_dict("records"):
        pair = f"{row['method']}-vs-{row['baseline']}"
        where = (row["protocol"], f"k{int(row['shots'])}", row["task"], pair)
        for name, column in (("diff", "mean_diff"), ("diff_low", "low"), ("diff_high", "high"),
                             ("mdd", "mdd")):  # fmt: skip
            value = _finite(row.get(column))
            if value is not None:
                metrics[metric_key(name, *where)] = value
    return metrics


def answer_tags(report_dir: Path) -> dict[str, str]:
    """The design (``metapt.design``: units per level) and the average verdicts of each MetaPT
    variant (``metapt.verdict.<protocol>.k<shots>.<method>-vs-<baseline>``)."""
    evidence = _read(report_dir, "evidence.csv")
    if evidence.empty:
        return {}
    first = evidence.iloc[0]
    tags = {
        "metapt.design": (
            f"{int(first['pretrain_seeds'])} pre-training seeds x {int(first['fewshot_seeds'])} "
            f"few-shot seeds x test rows; bounds: {first['interval']}"
        ),
    }
    average = evidence[evidence["task"] == "AVERAGE"]
    for row in average.to_dict("records"):
        key = f"metapt.verdict.{row['protocol']}.k{int(row['shots'])}.{row['method']}-vs-{row['baseline']}"
        tags[key] = (
            f"{row['verdict']}: {100 * row['mean_diff']:+.1f} points "
            f"[{100 * row['low']:+.1f}, {100 * row['high']:+.1f}] ({row['interval']}), "
            f"MDD {100 * row['mdd']:.1f}"
        )
    return tags


def verdict_markdown(report_dir: Path, limit: int = _MAX_TAG) -> str:
    """The report's title paragraph and its verdict sections, as the run's description."""
    file = report_dir / "report.md"
    if not file.is_file():
        return ""
    lines = file.read_text("utf-8").splitlines()
    kept: list[str] = []
    keep = True
    for line in lines:
        if line.startswith("## "):
            keep = line.startswith(("## Verdict", "## Warnings"))
        if keep and not line.startswith("!["):  # relative pictures do not resolve in a tag
            kept.append(line)
    text = "\n".join(kept).strip()
    text += "\n\nThe full report, with its plots: artifact `results/report.html`.\n"
    if len(text) > limit:
        text = text[: limit - 80].rsplit("\n", 1)[0] + "\n\n(cut; the full report is attached)\n"
    return text


def inline_images(markdown_text: str, root: Path) -> str:
    """``![alt](plot.png)`` -> ``![alt](data:image/png;base64,...)`` for the PNGs under ``root``."""

    def embed(match: re.Match[str]) -> str:
        file = root / match.group(2)
        if not file.is_file():
            return match.group(0)
        data = base64.b64encode(file.read_bytes()).decode("ascii")
        return f"![{match.group(1)}](data:image/png;base64,{data})"

    return _IMAGE.sub(embed, markdown_text)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       line-height: 1.45; color: #1b1f24; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d7de; padding: 0.25em 0.6em; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } code { background: #f6f8fa; padding: 0 0.2em; }
"""


def render_html(markdown_text: str, root: Path, title: str = "MetaPT report") -> str:
    """A self-contained HTML page of the report: tables rendered, images inlined."""
    import html

    import markdown

    body = markdown.markdown(inline_images(markdown_text, root), extensions=["tables"])
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


def summary_rows(report_dir: Path) -> list[dict[str, Any]]:
    """The summary table for the Prefect table artifact: per protocol, shots, task and init the
    mean accuracy and macro-F1 (percent) with the nested bounds and the untuned accuracy."""
    accuracy = _read(report_dir, "accuracy.csv")
    summary = _read(report_dir, "summary.csv")
    f1: Mapping[tuple[Any, ...], Any] = {}
    if not summary.empty:
        f1 = {
            (r["protocol"], int(r["shots"]), r["task"], r["init"]): r.get("macro_f1_mean")
            for r in summary.to_dict("records")
        }
    rows: list[dict[str, Any]] = []

    def pct(value: Any) -> str:
        number = _finite(value)
        return "" if number is None else f"{100 * number:.1f}"

    if accuracy.empty:
        for (protocol, shots, task, init), value in f1.items():
            rows.append({"protocol": protocol, "shots": shots, "task": task, "init": init,
                         "macro_f1": pct(value)})  # fmt: skip
        return rows
    for r in accuracy.to_dict("records"):
        key = (r["protocol"], int(r["shots"]), r["task"], r["init"])
        rows.append({
            "protocol": key[0], "shots": key[1], "task": key[2], "init": key[3],
            "accuracy": pct(r["mean"]), "low": pct(r["low"]), "high": pct(r["high"]),
            "bounds": r["interval"], "macro_f1": pct(f1.get(key)), "untuned": pct(r.get("untuned")),
        })  # fmt: skip
    return rows


# MLflow 3.17's UI picks its view from this query parameter (else from the browser's last
# choice, GenAI at first) rather than from the experiment's ``mlflow.experimentKind`` tag.
TRAINING_VIEW = "?workflowType=machine_learning"


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page, in the model-training view, when the tracking store is a server
    (``make serve``), else ``""``."""
    if not tracking_uri.startswith(("http://", "https://")):
        return ""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}{TRAINING_VIEW}"


def publish(tracker: Any, run_id: str, report_dir: Path) -> None:
    """Put the answer on the pipeline run ``run_id``: metrics, design and verdict tags, the
    verdict as the description, ``results/report.html`` (self-contained)."""
    if not run_id or not report_dir.is_dir():
        return
    tracker.log_stats(run_id, answer_metrics(report_dir))
    tags = answer_tags(report_dir)
    description = verdict_markdown(report_dir)
    if description:
        tags[DESCRIPTION_TAG] = description
    if tags:
        tracker.set_tags(run_id, tags)
    md = report_dir / "report.md"
    if md.is_file():
        page = render_html(md.read_text("utf-8"), report_dir)
        tracker.client.log_text(run_id, page, f"results/{HTML_NAME}")


def prefect_artifacts(report_dir: Path, run_url: str = "", flow_run_id: str = "") -> None:
    """The Prefect UI's view of the result: the summary table, the report with its images
    inlined (so they render in the artifact page), a link to the MLflow run when one is served.

    ``flow_run_id`` attaches them to that flow run (the one the user started, of which the
    report's subflow is a part) rather than to the current one.
    """
    from uuid import UUID

    from prefect.artifacts import LinkArtifact, MarkdownArtifact, TableArtifact

    owner = UUID(flow_run_id) if flow_run_id else None
    rows = summary_rows(report_dir)
    if rows:
        TableArtifact(
            table=rows,
            key="metapt-summary",
            description="Mean accuracy and macro-F1 (percent), nested bounds, untuned",
            flow_run_id=owner,
        ).create()
    md = report_dir / "report.md"
    if md.is_file():
        MarkdownArtifact(
            markdown=inline_images(md.read_text("utf-8"), report_dir),
            key="metapt-report",
            description="The report, images inlined",
            flow_run_id=owner,
        ).create()
    if run_url:
        LinkArtifact(
            link=run_url,
            link_text="MLflow run",
            key="metapt-mlflow-run",
            description="The pipeline's MLflow run: metrics, report, datasets, artifacts",
            flow_run_id=owner,
        ).create()


# (ref key, context tag, name prefix): what the run was trained and scored on
DATASET_REFS = (
    ("pool", "pre-training pool", "pool"),
    ("shards", "auxiliary tasks (clusters)", "shards"),
    ("tasks", "target tasks", "tasks"),
)


def _ref_path(ref: Any) -> Path | None:
    """The path of a stage reference (a ``{"path": ...}`` mapping or an ``ArtifactRef``), or
    None when there is none (``Path("")`` would be the current folder)."""
    raw = ref.get("path") if isinstance(ref, Mapping) else getattr(ref, "path", None)
    return Path(str(raw)) if raw else None


def dataset_entries(refs: Mapping[str, Any]) -> list[tuple[str, str, Path]]:
    """``(name, context, parquet file)`` for the pool, every shard and every task split found
    under the stage references ``refs`` (``{"path": ..., "sha256": ...}`` mappings)."""
    entries: list[tuple[str, str, Path]] = []
    for key, context, prefix in DATASET_REFS:
        path = _ref_path(refs.get(key))
        if path is None or not path.exists():
            continue
        root = path if path.is_dir() else path.parent
        files = [path] if path.is_file() and path.suffix == ".parquet" else sorted(
            root.rglob("*.parquet"))  # fmt: skip
        for file in files:
            rel = file.relative_to(root).with_suffix("").as_posix()
            context_of = context
            if key == "tasks":
                context_of = "evaluation" if file.stem == "test" else "training"
            name = rel if rel == prefix or rel.startswith(f"{prefix}/") else f"{prefix}/{rel}"
            entries.append((name, context_of, file))
    return entries


def dataset_inputs(refs: Mapping[str, Any]) -> list[Any]:
    """MLflow ``DatasetInput`` records (name, sha256 digest, local source, schema, row count)
    of :func:`dataset_entries`, tagged with their context."""
    import json

    import pyarrow.parquet as pq
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from metapt_core.store import sha256_file

    inputs = []
    for name, context, file in dataset_entries(refs):
        digest = sha256_file(file)
        meta = pq.read_metadata(file)
        schema = {"mlflow_colspec": [
            {"name": field.name, "type": str(field.type)} for field in meta.schema.to_arrow_schema()
        ]}  # fmt: skip
        dataset = Dataset(
            name=name,
            digest=digest[:16],
            source_type="local",
            source=json.dumps({"uri": file.resolve().as_uri()}),
            schema=json.dumps(schema),
            profile=json.dumps({"num_rows": meta.num_rows, "sha256": digest}),
        )
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def log_dataset_inputs(tracker: Any, run_id: str, refs: Mapping[str, Any]) -> int:
    """Log the pool, shards and task splits as the run's dataset inputs; how many."""
    inputs = dataset_inputs(refs)
    if run_id and inputs:
        tracker.client.log_inputs(run_id, datasets=inputs)
    return len(inputs)


def log_prompt_model(tracker: Any, outcome: Any, name: str) -> str:
    """Log a freshly computed prompt folder (``outcome`` of a ppt or meta-pretrain stage) as an
    MLflow logged model of its stage run, so MLflow lists the learned prompts as models; the
    model's id (``""`` when served from the store: it was logged when computed)."""
    import json

    from mlflow.entities import LoggedModelOutput

    if outcome.cached or not outcome.run_id:
        return ""
    folder = Path(outcome.ref.path)
    folder = folder if folder.is_dir() else folder.parent
    meta_file = folder / "prompt.json"
    meta = json.loads(meta_file.read_text("utf-8")) if meta_file.is_file() else {}
    params = {k: str(meta[k]) for k in ("made_by", "backbone", "seed", "length", "dim",
                                         "inner_lr", "steps", "init") if k in meta}  # fmt: skip
    client = tracker.client
    model = client.create_logged_model(
        tracker.experiment_id,
        name=name,
        source_run_id=outcome.run_id,
        params=params,
        model_type="peft-prompt-tuning",
        tags={"metapt.cache_key": outcome.key[:16]},
    )
    client.log_model_artifacts(model.model_id, str(folder))
    client.finalize_logged_model(model.model_id, "READY")
    client.log_outputs(outcome.run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


def log_history(tracker: Any, outcome: Any) -> int:
    """The pre-training curves of a prompt folder's ``history.json`` (support loss, query loss
    before and after adaptation, validation on held-out rows and clusters, update and gradient
    norms) as step metrics of the stage's run in this pipeline run; how many points."""
    import json
    import time

    from mlflow.entities import Metric

    folder = Path(outcome.ref.path)
    file = (folder if folder.is_dir() else folder.parent) / "history.json"
    if not outcome.run_id or not file.is_file():
        return 0
    now = int(time.time() * 1000)
    metrics = []
    for index, entry in enumerate(json.loads(file.read_text("utf-8"))):
        step = int(entry.get("step", index))
        for key, value in entry.items():
            number = _finite(value) if key != "step" and not isinstance(value, bool) else None
            if number is not None:
                metrics.append(Metric(metric_key("curve", key), number, now, step))
    for start in range(0, len(metrics), 1000):
        tracker.client.log_batch(outcome.run_id, metrics=metrics[start : start + 1000])
    return len(metrics)


def log_cluster_diagnostics(tracker: Any, run_id: str, refs: Mapping[str, Any]) -> bool:
    """The clustering's diagnostics (the scatter with its legend of top terms and class mix,
    sizes, top terms, metrics) on the pipeline run under ``clusters/``, computed or cached."""
    path = _ref_path(refs.get("shards"))
    found = [p for p in (path, path.parent) if (p / "diagnostics").is_dir()] if path else []
    if not run_id or not found:
        return False
    tracker.log_artifacts(run_id, found[0] / "diagnostics", "clusters")
    return True


def log_pretraining_curves(tracker: Any, run_id: str, prompts: Mapping[str, Any]) -> bool:
    """One picture of every prompt's pre-training curves (``prompts``: name -> the ref of its
    folder) on the pipeline run, as ``pretraining/curves.png``."""
    import json
    import tempfile

    from metapt_core.report.plots import pretraining_plot

    histories: dict[str, list[dict[str, Any]]] = {}
    for name, ref in prompts.items():
        path = _ref_path(ref)
        if path is None:
            continue
        file = (path if path.is_dir() else path.parent) / "history.json"
        if file.is_file():
            histories[str(name).removeprefix("prompt:")] = json.loads(file.read_text("utf-8"))
    if not run_id or not histories:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        picture = pretraining_plot(histories, Path(tmp) / "curves.png")
        tracker.client.log_artifact(run_id, str(picture), "pretraining")
    return True


def publish_prompt(tracker: Any, outcome: Any, name: str) -> None:
    """A pre-training stage's views: its curves as step metrics (:func:`log_history`) and its
    prompt as a logged model (:func:`log_prompt_model`); a failure is a warning, never a failed
    stage (the prompt folder is stored and logged as artifacts either way)."""
    from tasks.progress import run_logger

    try:
        log_history(tracker, outcome)
        log_prompt_model(tracker, outcome, name)
    except Exception as error:
        run_logger().warning("%s: curves or model not logged to MLflow: %s", name, error)
