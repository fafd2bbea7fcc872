"""The ``metapt`` flow against a real local Prefect API, with the core stand-ins.

The stand-ins (``orchestration_standins``) replace the core functions in this process only, to
unit-test the orchestration logic; the real core is exercised by the e2e, resume, concurrency
and cache-integrity tests.

Changing one stage's setting recomputes that stage and its dependents only; ``refresh``
forces a stage; a failing grid group is retried and reported while the others are kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory):
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
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


def test_only_the_changed_stage_and_its_dependents_recompute(
    harness, fakes: Path, tmp_path: Path
) -> None:
    from flows.metapt import metapt_flow

    work = f"work_dir={tmp_path / 'work'}"
    refs = metapt_flow(profile="smoke", overrides=[work])
    assert calls(fakes) == [
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
    again = metapt_flow(profile="smoke", overrides=[work])
    assert {k: v for k, v in again.items() if k != "mlflow_run_id"} == {
        k: v for k, v in refs.items() if k != "mlflow_run_id"
    }
    assert calls(fakes) == []  # nothing recomputed

    changed = metapt_flow(profile="smoke", overrides=[work, "cluster.n_clusters=2"])
    assert calls(fakes) == [
        "cluster",
        "ppt",
        "meta-pretrain-maml",
        "meta-objective-p0",
        "evaluate-cells mr/k2/s0",
        "evaluate-cells mr/k2/s1",
        "report",
    ]
    assert changed["embed"] == refs["embed"] and changed["shards"] != refs["shards"]

    # a forced stage whose output comes out identical leaves its dependents cached
    metapt_flow(profile="smoke", overrides=[work], refresh=["embed"])
    assert calls(fakes) == ["embed"]


def test_the_step_flows_run_the_walks_stages_wave_by_wave(
    harness, fakes: Path, tmp_path: Path
) -> None:
    """The subflows follow the plan's walk (:func:`tasks.plan.walk`): every stage plan it
    yields runs once, as an MLflow stage run named by the walk's label, each wave after the
    waves before it."""
    import mlflow

    from flows.metapt import metapt_flow
    from metapt_core.config import load_config
    from metapt_core.store import ArtifactRef
    from tasks import plan

    work = f"work_dir={tmp_path / 'work'}"
    metapt_flow(profile="smoke", overrides=[work])
    waves: list[list[str]] = []

    def serve(wave: plan.Wave) -> list[ArtifactRef | None]:
        waves.append([label for label, _ in wave])
        return [ArtifactRef(path=label, sha256=label) for label, _ in wave]

    plan.follow(load_config("smoke", overrides=[work]), serve)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow' / 'mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        ids, "tags.`metapt.kind` = 'stage'", order_by=["attributes.start_time ASC"]
    )
    names = [r.info.run_name for r in runs]
    assert len(waves) == 8 and len(names) == sum(len(w) for w in waves)
    start = 0
    for wave in waves:
        assert sorted(names[start : start + len(wave)]) == sorted(wave), (start, names)
        start += len(wave)


def test_failed_group_is_retried_and_reported(
    harness, fakes: Path, tmp_path: Path, monkeypatch
) -> None:
    from flows.metapt import metapt_flow

    monkeypatch.setenv("METAPT_FAKE_FAIL", "mr/k2/s1")
    refs = metapt_flow(
        profile="smoke", overrides=[f"work_dir={tmp_path / 'work'}", "grid.retries=1"]
    )
    made = calls(fakes)
    assert made.count("evaluate-cells mr/k2/s1") == 2  # first try + one retry
    assert made.count("evaluate-cells mr/k2/s0") == 1 and made[-1] == "report"
    report = (Path(refs["report"]["path"]) / "results.csv").read_text()
    assert "metapt_maml" in report


def test_stored_stages_are_cached_states_and_runs_are_named(
    harness, fakes: Path, tmp_path: Path
) -> None:
    """In the Prefect UI a stage served from the store is a Cached task run (type COMPLETED), a
    computed one Completed; the flow run is named from the profile and the config's hash; the
    profile parameter is a choice list in the deployments' form."""
    import asyncio
    import typing

    from prefect.client.orchestration import get_client

    from flows.context import Profile
    from flows.metapt import metapt_flow
    from metapt_core.config import PROFILES, load_config, to_dict
    from metapt_core.store import stable_hash

    work = f"work_dir={tmp_path / 'work'}"
    metapt_flow(profile="smoke", overrides=[work])
    assert len(calls(fakes)) == 10
    # every stage but the forced report served from the store, as a task run
    state = metapt_flow(profile="smoke", overrides=[work], refresh=["report"], return_state=True)
    assert calls(fakes) == ["report"]

    async def read() -> tuple[str, list[tuple[str, str, str]]]:
        async with get_client() as client:
            flow_run = await client.read_flow_run(state.state_details.flow_run_id)
            runs = await client.read_task_runs()
            return flow_run.name, [
                (r.name.rsplit("-", 1)[0], r.state.name, r.state.type.value)
                for r in runs
                if r.state is not None
            ]

    name, task_runs = asyncio.run(read())
    digest = stable_hash(to_dict(load_config("smoke", overrides=[work])))[:8]
    assert name == f"smoke-{digest}"
    for stage in ("ingest-pool", "ingest-tasks", "embed", "cluster", "ppt", "meta-pretrain",
                  "meta-objective", "evaluate-cells"):  # fmt: skip
        seen = {(n, t) for s, n, t in task_runs if s == stage}
        assert ("Completed", "COMPLETED") in seen, (stage, seen)  # the first run computed it
        assert ("Cached", "COMPLETED") in seen, (stage, seen)  # the second served it
    assert ("Completed", "COMPLETED") in {(n, t) for s, n, t in task_runs if s == "report"}
    assert typing.get_args(Profile) == PROFILES
    assert metapt_flow.parameters.properties["profile"]["enum"] == list(PROFILES)


def test_a_stage_flow_alone_runs_what_it_needs_first(harness, fakes: Path, tmp_path: Path) -> None:
    """What a stage deployment does: with no refs handed down, the evaluate flow runs its
    upstream flows as subflows (everything, the first time), then only itself."""
    from flows.steps import entry_flows

    cluster_flow, evaluate_flow = entry_flows()["cluster"], entry_flows()["evaluate"]

    work = f"work_dir={tmp_path / 'work'}"
    refs = evaluate_flow(profile="smoke", overrides=[work])
    assert len(calls(fakes)) == 10 and "report" in refs and "prompt:ppt@0" in refs
    shards = cluster_flow(profile="smoke", overrides=[work])
    assert calls(fakes) == [] and shards["shards"] == refs["shards"]  # served from the store


def test_a_run_stored_whole_is_served_without_computing(
    harness, fakes: Path, tmp_path: Path
) -> None:
    """A deployment's full-pipeline run whose every stage is stored computes nothing and runs
    no stage: it is recorded as one cached MLflow run, as ``metapt run`` records it, tagged
    with the entry flow it was asked of."""
    import mlflow

    from flows.metapt import metapt_flow
    from flows.steps import entry_flows

    evaluate_flow = entry_flows()["evaluate"]

    work = f"work_dir={tmp_path / 'work'}"
    refs = metapt_flow(profile="smoke", overrides=[work])
    assert len(calls(fakes)) == 10
    again = metapt_flow(profile="smoke", overrides=[work])
    assert calls(fakes) == []
    assert {k: v for k, v in again.items() if k != "mlflow_run_id"} == {
        k: v for k, v in refs.items() if k != "mlflow_run_id"
    }
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlflow' / 'mlflow.db'}")
    tags = client.get_run(again["mlflow_run_id"]["id"]).data.tags
    assert tags["metapt.cached"] == "true" and tags["metapt.flow"] == "metapt"
    assert tags["metapt.source_pipeline_run"] == refs["mlflow_run_id"]["id"]
    # the evaluate step's own deployment ends where the pipeline does: served the same way
    alone = evaluate_flow(profile="smoke", overrides=[work])
    assert calls(fakes) == [] and alone["report"] == refs["report"]
    tags = client.get_run(alone["mlflow_run_id"]["id"]).data.tags
    assert tags["metapt.cached"] == "true" and tags["metapt.flow"] == "metapt-evaluate"


def test_the_configuration_is_resolved_once_per_run(
    harness, fakes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry flow resolves its strings once, however many steps it runs as subflows; a
    flow handed a resolved configuration (``metapt run``'s) never resolves it again."""
    import flows.context as context
    import metapt_core.config as config
    from flows.context import RunRequest
    from flows.metapt import resolved_pipeline_flow
    from flows.steps import entry_flows

    evaluate_flow = entry_flows()["evaluate"]

    resolved: list[str] = []
    real = config.load_config

    def counting(profile: str, *args: object, **kwargs: object) -> config.PipelineConfig:
        resolved.append(profile)
        return real(profile, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(config, "load_config", counting)
    monkeypatch.setattr(context, "load_config", counting)
    work = f"work_dir={tmp_path / 'work'}"
    refs = evaluate_flow(profile="smoke", overrides=[work])  # five steps, each a subflow
    assert len(calls(fakes)) == 10 and "report" in refs
    assert resolved == ["smoke"]

    request = RunRequest.of("smoke", overrides=[work], refresh=["report"])
    cfg = request.resolve()
    resolved.clear()
    again = resolved_pipeline_flow(request, cfg)
    assert calls(fakes) == ["report"] and again["shards"] == refs["shards"]
    assert resolved == []
