"""The store cache behind every stage: keys, hits, misses, refresh, integrity, MLflow trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from metapt_core.config import load_config
from metapt_core.store import ArtifactRef, atomic_write_text
from tasks.cache import lookup, stage_key
from tasks.stage import RunContext, StageSpec, execute_stage, expand_refresh
from tasks.tracking import Tracker


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("work")
    return load_config("smoke", overrides=[f"work_dir={work}"])


@pytest.fixture(scope="module")
def ctx(cfg) -> RunContext:
    tracker = Tracker.open(cfg)
    parent = tracker.start_run("pipeline", tags={"metapt.kind": "pipeline"}, parent_run_id="")
    return RunContext(cfg=cfg, tracker=Tracker(tracker.uri, tracker.experiment_id, parent))


def make_spec(
    calls: list[str], upstream: dict[str, ArtifactRef], value: str = "a", stage: str = "demo"
) -> StageSpec:
    def compute(out_dir: Path, progress) -> tuple[ArtifactRef, dict]:
        calls.append(value)
        progress(1, 1, "done")
        atomic_write_text(out_dir / "result.txt", value)
        return ArtifactRef.of(out_dir / "result.txt"), {"loss": [1.0, 0.5], "rows": 3}

    return StageSpec(
        stage=stage, settings={"value": value}, upstream=upstream, entries=[], compute=compute
    )


def test_second_call_is_served_from_store_and_traced(ctx) -> None:
    calls: list[str] = []
    first = execute_stage(ctx, make_spec(calls, {}, stage="trace"))
    second = execute_stage(ctx, make_spec(calls, {}, stage="trace"))
    assert calls == ["a"]
    assert not first.cached and second.cached
    assert second.ref == first.ref and second.source_run_id == first.run_id
    run = ctx.tracker.client.get_run(second.run_id)
    assert run.data.tags["metapt.cached"] == "true"
    assert run.data.tags["metapt.source_run_id"] == first.run_id
    assert run.data.tags["mlflow.parentRunId"] == ctx.tracker.parent_run_id
    history = ctx.tracker.client.get_metric_history(first.run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [1.0, 0.5]


def test_upstream_content_change_at_same_path_recomputes(ctx, tmp_path: Path) -> None:
    upstream_file = tmp_path / "upstream.txt"
    upstream_file.write_text("v1")
    calls: list[str] = []
    execute_stage(ctx, make_spec(calls, {"up": ArtifactRef.of(upstream_file)}, stage="up"))
    upstream_file.write_text("v2")  # same path, new content
    execute_stage(ctx, make_spec(calls, {"up": ArtifactRef.of(upstream_file)}, stage="up"))
    execute_stage(ctx, make_spec(calls, {"up": ArtifactRef.of(upstream_file)}, stage="up"))
    assert calls == ["a", "a"]


def test_settings_change_recomputes_and_refresh_forces(ctx) -> None:
    calls: list[str] = []
    execute_stage(ctx, make_spec(calls, {}, "a", stage="ingest-pool"))
    execute_stage(ctx, make_spec(calls, {}, "b", stage="ingest-pool"))
    execute_stage(ctx, make_spec(calls, {}, "b", stage="ingest-pool"))
    forced = RunContext(ctx.cfg, ctx.tracker, refresh=expand_refresh(["ingest"]))
    again = execute_stage(forced, make_spec(calls, {}, "b", stage="ingest-pool"))
    assert calls == ["a", "b", "b"] and not again.cached


def test_altered_artifact_is_recomputed(ctx) -> None:
    calls: list[str] = []
    first = execute_stage(ctx, make_spec(calls, {}, stage="tamper"))
    Path(first.ref.path).write_text("tampered")
    assert lookup(ctx.cfg.work_path, "tamper", first.key) is None
    second = execute_stage(ctx, make_spec(calls, {}, stage="tamper"))
    assert calls == ["a", "a"] and not second.cached
    assert Path(second.ref.path).read_text() == "a"


def test_failure_leaves_nothing_and_marks_run_failed(ctx) -> None:
    def compute(out_dir: Path, progress) -> tuple[ArtifactRef, dict]:
        (out_dir / "half.txt").write_text("half")
        raise RuntimeError("boom")

    spec = StageSpec(stage="fails", settings={}, upstream={}, entries=[], compute=compute)
    with pytest.raises(RuntimeError, match="boom"):
        execute_stage(ctx, spec)
    stage_dir = ctx.cfg.work_path / "artifacts" / "fails"
    assert not any(stage_dir.iterdir())
    failed = ctx.tracker.client.search_runs(
        [ctx.tracker.experiment_id], "tags.`metapt.stage` = 'fails'"
    )
    assert [r.info.status for r in failed] == ["FAILED"]


def test_key_depends_on_code_settings_and_upstream_content() -> None:
    ref = ArtifactRef(path="/x", sha256="1" * 64)
    base = stage_key("s", "code", {"k": 1}, {"u": ref})
    assert base == stage_key(
        "s", "code", {"k": 1}, {"u": ArtifactRef(path="/moved", sha256="1" * 64)}
    )
    assert base != stage_key("s", "code2", {"k": 1}, {"u": ref})
    assert base != stage_key("s", "code", {"k": 2}, {"u": ref})
    assert base != stage_key("s", "code", {"k": 1}, {"u": ArtifactRef(path="/x", sha256="2" * 64)})


def test_signature_trusts_unchanged_files_and_verify_reads_every_byte(ctx) -> None:
    """An unchanged out/ (size, mtime, inode) is trusted without hashing; any write, even of the
    same size, changes the signature and the sha256 is checked; --verify always checks it."""
    import os

    calls: list[str] = []
    outcome = execute_stage(ctx, make_spec(calls, {}, "sig", stage="signature"))
    work = ctx.cfg.work_path
    assert lookup(work, "signature", outcome.key) is not None
    file = Path(outcome.ref.path)
    stat = file.stat()
    file.write_text("xyz")  # same size, new bytes, new mtime
    assert lookup(work, "signature", outcome.key) is None
    # the same edit with its old mtime restored keeps the signature: only --verify sees it
    os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert lookup(work, "signature", outcome.key) is not None
    assert lookup(work, "signature", outcome.key, verify=True) is None
    os.environ["METAPT_VERIFY"] = "1"
    try:
        assert lookup(work, "signature", outcome.key) is None
    finally:
        del os.environ["METAPT_VERIFY"]
    file.write_text("sig")
    assert lookup(work, "signature", outcome.key) is not None  # full check: the content is back
