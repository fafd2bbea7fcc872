"""Cache integrity: altered outputs are never used, and each change invalidates exactly what it should.

Real outputs (one real smoke run, module fixture): a stored file of any stage that is truncated or
altered is rejected by its fingerprint; a rerun recomputes exactly the tampered stages, restores
the same bytes, and serves everything else from the store.

Invalidation per stage (the orchestration with the core stand-ins, in-process on a local
Prefect API, so that each case is a few seconds): a parameter a stage reads recomputes that stage
and its dependents; a change in a stage's code version recomputes that stage (whose output, the
same, then leaves its dependents cached); a change in an input file's content recomputes its
ingestion. The store's records (``flow_run_id``) and the stand-ins' call log tell what recomputed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from smoke_runs import isolated_env, records, results_table, run, run_command

from tasks.cache import RECORD, lookup

pytestmark = pytest.mark.slow

STORE_STAGES = (
    "ingest-pool",
    "ingest-tasks",
    "embed",
    "cluster",
    "ppt",
    "meta-pretrain",
    "meta-objective",
    "evaluate-cells",
    "report",
)
ALL_CALLS = [
    "ingest-pool",
    "ingest-tasks",
    "embed",
    "cluster",
    "ppt",
    "meta-pretrain-maml",
    "meta-objective-p0",
    "evaluate-cells mr/k2/s0",
    "evaluate-cells mr/k2/s1",
    "report",
]
GRID_CALLS = ["evaluate-cells mr/k2/s0", "evaluate-cells mr/k2/s1", "report"]
CHECK = "meta-objective-p0"  # the seed's meta-objective check reads every pre-trained prompt
PRETRAIN_CALLS = ["ppt", "meta-pretrain-maml", CHECK, *GRID_CALLS]


# ------------------------------------------------------------------ real outputs


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """The work dir of one real smoke run."""
    root = tmp_path_factory.mktemp("integrity")
    result = run(root / "work", assets_dir, isolated_env(root / "home"), root / "run.log")
    assert result.returncode == 0, result.output[-4000:]
    return root / "work"


def stage_entries(work: Path, stage: str) -> list[Path]:
    return sorted(p.parent for p in (work / "artifacts" / stage).glob(f"*/{RECORD}"))


def stored_files(folder: Path) -> list[Path]:
    return sorted(p for p in (folder / "out").rglob("*") if p.is_file())


def valid(folder: Path, stage: str) -> bool:
    key = json.loads((folder / RECORD).read_text())["key"]
    return lookup(folder.parent.parent.parent, stage, key) is not None


@pytest.mark.parametrize("stage", STORE_STAGES)
def test_altered_or_truncated_real_output_is_rejected(real_store: Path, stage: str) -> None:
    folder = stage_entries(real_store, stage)[0]
    assert valid(folder, stage)
    for file in stored_files(folder):  # every file of the output, not only the one passed on
        original = file.read_bytes()
        try:
            file.write_bytes(original[: len(original) // 2])  # truncated
            assert not valid(folder, stage), f"truncated {file} accepted"
            altered = bytearray(original)
            altered[len(altered) // 2] ^= 0x01  # one bit flipped, same size
            file.write_bytes(bytes(altered))
            assert not valid(folder, stage), f"altered {file} accepted"
        finally:
            file.write_bytes(original)
        assert valid(folder, stage)


def test_fully_cached_rerun_is_decided_before_torch_and_prefect(
    real_store: Path, tmp_path: Path, assets_dir: Path
) -> None:
    """Nothing to compute: the stored report is printed from the records alone (no torch, no
    Prefect imported), and the rerun is one MLflow pipeline run linked to the computing run."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    shutil.copytree(real_store, work)  # new inodes: every stored artifact is hashed once
    argv = run_command(work, assets_dir)[1:]  # the metapt command's arguments
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        f"rc = main({argv!r})\n"
        "print('HEAVY', sorted(m for m in ('torch', 'prefect', 'transformers') if m in sys.modules))\n"
        "sys.exit(rc)\n"
    )
    env = isolated_env(tmp_path / "home")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "every stage (10) was served from the store" in done.stdout
    assert "HEAVY []" in done.stdout
    assert "# MetaPT few-shot evaluation" in done.stdout
    report = next(iter(records(work)["report"]))
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("metapt")
    assert experiment is not None
    cached = client.search_runs(
        [experiment.experiment_id],
        "tags.`metapt.kind` = 'pipeline' and tags.`metapt.cached` = 'true'",
    )
    assert len(cached) == 1 and cached[0].info.status == "FINISHED"
    assert cached[0].data.tags["metapt.source_run_id"] == report["source_run_id"]
    assert cached[0].data.tags["metapt.source_pipeline_run"]
    assert "results/report.md" in {
        a.path for a in client.list_artifacts(cached[0].info.run_id, "results")
    }
    # a changed setting is not served whole: the pipeline runs (and computes the report anew)
    again = run(work, assets_dir, env, tmp_path / "changed.log", "--set", "grid.bootstrap=150")
    assert again.returncode == 0, again.output[-3000:]
    assert "every stage" not in again.output
    assert "report: computing" in again.output


def test_a_real_store_carried_to_an_empty_work_dir_serves_the_whole_run(
    real_store: Path, tmp_path: Path, assets_dir: Path
) -> None:
    """``metapt cache export`` on one machine, ``import`` on another (an empty work dir with its
    own MLflow): the rerun computes nothing, and each stage's record says where it was computed."""
    from flows.cli import main
    from metapt_core.scoring.dtype_probe import cpu_model

    archive = tmp_path / "store.tar.gz"
    common = ["--profile", "smoke", "--set", f"assets_dir={assets_dir}", "--set"]
    assert main(["cache", "export", "--out", str(archive), *common, f"work_dir={real_store}"]) == 0
    work = tmp_path / "elsewhere"
    assert main(["cache", "import", str(archive), *common, f"work_dir={work}"]) == 0
    assert not (work / "mlflow").exists()  # nothing of the source's tracking came along
    done = run(work, assets_dir, isolated_env(tmp_path / "home"), tmp_path / "rerun.log")
    assert done.returncode == 0, done.output[-3000:]
    assert "every stage (10) was served from the store" in done.output
    for stage in STORE_STAGES:
        for folder in stage_entries(work, stage):
            assert json.loads((folder / RECORD).read_text())["machine"] == cpu_model()


def test_tampered_real_outputs_are_recomputed_never_used(
    real_store: Path, tmp_path: Path, assets_dir: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(real_store / "artifacts", work / "artifacts")
    before = {stage: {json.dumps(r["ref"]) for r in recs} for stage, recs in records(work).items()}
    table = results_table(work)
    tampered = {
        "embed": stage_entries(work, "embed")[0] / "out" / "embeddings.npy",
        "meta-pretrain": stage_entries(work, "meta-pretrain")[0] / "out" / "prompt.safetensors",
    }
    original = {stage: path.read_bytes() for stage, path in tampered.items()}
    tampered["embed"].write_bytes(original["embed"][:-64])  # truncated
    tampered["meta-pretrain"].write_bytes(original["meta-pretrain"][:-4] + b"\0\0\0\0")  # altered
    result = run(work, assets_dir, isolated_env(tmp_path / "home"), tmp_path / "rerun.log")
    assert result.returncode == 0, result.output[-4000:]

    recomputed = sorted(
        stage
        for stage, recs in records(work).items()
        for r in recs
        if r["source_run_id"] not in _source_runs(real_store, stage)
    )
    # The tampered stages are recomputed. Their files come out identical; embed's folder also
    # holds timings, so cluster may recompute too, but its shards come out the same and every
    # later stage is served from the store.
    assert {"embed", "meta-pretrain"} <= set(recomputed) <= {"embed", "cluster", "meta-pretrain"}
    for stage, path in tampered.items():
        assert path.read_bytes() == original[stage], f"{stage} not restored"
    after = {stage: {json.dumps(r["ref"]) for r in recs} for stage, recs in records(work).items()}
    for stage in ("ppt", "evaluate-cells", "report", "ingest-pool", "ingest-tasks"):
        assert after[stage] == before[stage], stage
    assert "embed: computing" in result.output
    assert "meta-pretrain-maml-p0: computing" in result.output
    assert "ppt-p0: served from cache" in result.output
    assert "evaluate-mr-k2-s0-p0: served from cache" in result.output
    assert results_table(work) == table


def _source_runs(work: Path, stage: str) -> set[str]:
    return {str(r["source_run_id"]) for r in records(work).get(stage, [])}


# ------------------------------------------------------------------ invalidation per stage


@pytest.fixture(scope="module")
def harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def standins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import orchestration_standins

    log = tmp_path / "calls.log"
    orchestration_standins.install(monkeypatch)
    monkeypatch.setenv("METAPT_FAKE_LOG", str(log))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.write_text("")
    return lines


@pytest.fixture(scope="module")
def baseline(harness: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The store of one stand-in run of the smoke profile (copied by each case)."""
    import orchestration_standins

    from flows.metapt import metapt_flow

    work = tmp_path_factory.mktemp("baseline") / "work"
    with pytest.MonkeyPatch.context() as patch:
        orchestration_standins.install(patch)
        patch.delenv("METAPT_FAKE_LOG", raising=False)
        metapt_flow(profile="smoke", overrides=[f"work_dir={work}"])
    return work


def rerun(baseline: Path, tmp_path: Path, **kwargs: Any) -> Path:
    from flows.metapt import metapt_flow

    work = tmp_path / "work"
    shutil.copytree(baseline / "artifacts", work / "artifacts")
    overrides = [f"work_dir={work}", *kwargs.pop("overrides", [])]
    metapt_flow(profile="smoke", overrides=overrides, **kwargs)
    return work


TASKS_YAML = """\
tasks:
  - name: mr
    train: {name: vader-movie, format: builtin, path: vader_movie, label_column: score,
            label_bins: [-1.0e-9, 1.0e-9], label_map: {"0": negative, "2": positive},
            drop_unmapped: true, max_rows: 2000}
    classes: [negative, positive]
    verbalizer: [bad, good]
    max_test: 16
"""

# (stage, a setting only that stage reads, the computations it must cause)
PARAMETERS = [
    ("ingest-pool", "pool.seed=7", ALL_CALLS),
    ("ingest-tasks", TASKS_YAML, ["ingest-tasks", *GRID_CALLS]),
    ("embed", "embed.batch_size=32", ALL_CALLS[2:]),
    ("cluster", "cluster.n_clusters=2", ALL_CALLS[3:]),
    ("ppt", "ppt.lr=0.01", ["ppt", CHECK, *GRID_CALLS]),
    # a setting of MetaPT's alone (how its meta-batch is batched): PPT is kept
    ("meta-pretrain", "meta.group_tasks=true", ["meta-pretrain-maml", CHECK, *GRID_CALLS]),
    # PPT's optimiser is matched to MetaPT's outer one unless ppt.* is set, so it follows it...
    ("meta-outer-lr", "meta.outer_lr=0.05", PRETRAIN_CALLS),
    # ...and an explicit ppt.lr keeps PPT stored when MetaPT's outer lr changes
    (
        "meta-outer-lr-ppt-set",
        ["ppt.lr=0.03", "meta.outer_lr=0.05"],
        ["meta-pretrain-maml", CHECK, *GRID_CALLS],
    ),
    # PPT's budget is matched to MetaPT's, so it follows it
    ("meta-budget", "meta.meta_steps=4", PRETRAIN_CALLS),
    ("evaluate", "fewshot.steps=3", GRID_CALLS),
    # a group receives its own (shots, seed): adding a seed computes only the new group
    ("add-seed", "fewshot.seeds=[0, 1, 2]", ["evaluate-cells mr/k2/s2", "report"]),
    ("report", "grid.bootstrap=100", ["report"]),
]


@pytest.mark.parametrize(
    ("stage", "setting", "expected"), PARAMETERS, ids=[p[0] for p in PARAMETERS]
)
def test_parameter_change_recomputes_stage_and_dependents(
    baseline: Path,
    standins: Path,
    tmp_path: Path,
    stage: str,
    setting: str | list[str],
    expected: list[str],
) -> None:
    if isinstance(setting, str) and setting.startswith("tasks:"):
        config = tmp_path / "tasks.yaml"
        config.write_text(setting)
        rerun(baseline, tmp_path, config_file=str(config))
    else:
        rerun(baseline, tmp_path, overrides=[setting] if isinstance(setting, str) else setting)
    assert calls(standins) == expected


# (project module, the computations a change of its source must cause): each stage's code key
# is the import closure of its core function (tasks.core.code_identity), so these follow from the
# imports, not from a list kept by hand.
EVALS = ["evaluate-cells mr/k2/s0", "evaluate-cells mr/k2/s1"]
CODE = [
    ("metapt_core.data", ["ingest-pool", "ingest-tasks"]),
    # clustering reads the pool through embedding.read_pool
    ("metapt_core.embedding", ["embed", "cluster"]),
    ("metapt_core.clustering.kmeans", ["cluster"]),
    ("metapt_core.ppt", ["ppt"]),
    # PPT and MetaPT share the episode sampler (the check draws its episodes with it too) and
    # the training loop (which the check does not run: its inputs, the prompts, carry a change)
    ("metapt_core.pretraining.episodes", ["ppt", "meta-pretrain-maml", CHECK]),
    ("metapt_core.pretraining.loop", ["ppt", "meta-pretrain-maml"]),
    # the inner SGD step: MAML's inner loop, the check's adaptation and the inner protocol
    ("metapt_core.inner_sgd", ["ppt", "meta-pretrain-maml", CHECK, *EVALS]),
    ("metapt_core.scoring.packing", ["ppt", "meta-pretrain-maml", CHECK, *EVALS]),
    ("metapt_core.backbone", ["ppt", "meta-pretrain-maml", CHECK, *EVALS]),
    ("metapt_core.fewshot.tuning", EVALS),
    ("metapt_core.report.stats", ["report"]),
    # the derived settings (ppt_budget, min_rows_per_class) live in config.pipeline; every
    # stage imports the config package, whose __init__ imports each of its modules
    ("metapt_core.config", ALL_CALLS),
    ("metapt_core.config.pipeline", ALL_CALLS),
]


@pytest.mark.parametrize(("module", "expected"), CODE, ids=[c[0] for c in CODE])
def test_code_change_recomputes_stage(
    baseline: Path,
    standins: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    expected: list[str],
) -> None:
    import dataclasses

    import tasks.stage

    real = tasks.stage.code_identity

    def edited(entries: Any, wrapper: str = "", root: Any = None) -> Any:
        identity = real(entries, wrapper, root)
        if module in identity.modules:
            return dataclasses.replace(identity, digest=identity.digest + "+edited")
        return identity

    monkeypatch.setattr(tasks.stage, "code_identity", edited)
    rerun(baseline, tmp_path)
    # The stand-ins' outputs do not depend on the code version: the dependents stay cached.
    assert calls(standins) == expected


def test_input_file_content_change_recomputes_ingestion(
    harness: None, standins: Path, tmp_path: Path
) -> None:
    from flows.metapt import metapt_flow

    data = tmp_path / "pool.csv"
    lines = ["text,label"] + [
        f"tweet number {i} about things,{('negative', 'neutral', 'positive')[i % 3]}"
        for i in range(90)
    ]
    data.write_text("\n".join(lines) + "\n")
    config = tmp_path / "pool.yaml"
    config.write_text(
        "pool:\n  sources:\n"
        f"    - {{name: user-pool, format: csv, path: {data}, label_column: label}}\n"
    )
    work = [f"work_dir={tmp_path / 'work'}"]
    metapt_flow(profile="smoke", config_file=str(config), overrides=work)
    assert calls(standins) == ALL_CALLS
    metapt_flow(profile="smoke", config_file=str(config), overrides=work)
    assert calls(standins) == []
    data.write_text("\n".join([*lines, "one more tweet about things,positive"]) + "\n")
    metapt_flow(profile="smoke", config_file=str(config), overrides=work)
    # The stand-in's pool does not read the file: only the ingestion itself is redone.
    assert calls(standins) == ["ingest-pool"]
