"""The ``metapt`` command: config errors exit 2 with one line, config printing, cache clearing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from flows.cli import main


def test_config_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--profile", "smoke", "--set", "cluster.n_clusters=1"]) == 2
    err = capsys.readouterr().err
    assert err == "error: cluster.n_clusters=1: must be 0 (auto) or >= 2\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--profile", "nope"],
        ["run", "--profile", "smoke", "--refresh", "bogus"],
        ["run", "--profile", "smoke", "--config", "/does/not/exist.yaml"],
        ["config", "--profile", "smoke", "--set", "cluster.unknown=3"],
    ],
)
def test_bad_input_fails_before_work(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1
    assert "resolved configuration" not in captured.out


def test_config_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--profile", "smoke", "--set", "cluster.n_clusters=5"]) == 0
    out = capsys.readouterr().out
    assert "profile: smoke" in out and "n_clusters: 5" in out


def test_cache_clear_removes_one_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for stage in ("cluster", "embed"):
        (tmp_path / "artifacts" / stage / "abc").mkdir(parents=True)
    assert (
        main(["cache", "clear", "cluster", "--profile", "smoke", "--set", f"work_dir={tmp_path}"])
        == 0
    )
    assert not (tmp_path / "artifacts" / "cluster").exists()
    assert (tmp_path / "artifacts" / "embed").exists()
    assert main(["cache", "clear", "--profile", "smoke", "--set", f"work_dir={tmp_path}"]) == 0
    assert not (tmp_path / "artifacts" / "embed").exists()


def test_every_bundled_profile_resolves(capsys: pytest.CaptureFixture[str]) -> None:
    from metapt_core.config import PROFILES

    for name in PROFILES:
        assert main(["config", "--profile", name]) == 0, name
        assert f"profile: {name}" in capsys.readouterr().out


def test_lever_base_keeps_the_reference_runs_settings() -> None:
    """The lever table in docs/levers.md pairs runs with the reference run of the lever base
    (experiments/levers_base.yaml over the default profile): its settings must stay that run's."""
    from metapt_core.config import load_config

    base = Path(__file__).resolve().parents[1] / "experiments" / "levers_base.yaml"
    cfg = load_config("default", config_file=base)
    assert cfg.pool.max_rows == 8000 and cfg.cluster.n_clusters == 8
    m = cfg.meta
    assert (m.meta_steps, m.inner_lr, m.outer_lr, m.val_clusters, m.clip_grad_norm) == (
        30, 0.3, 0.03, 0, 0.0
    )  # fmt: skip
    assert (m.curvature_scale, m.max_step_ratio, m.warmup_steps, m.final_lr_fraction) == (
        0.0, 0.0, 0, 1.0
    )  # fmt: skip
    assert m.balanced_episodes and m.group_tasks  # as in the reference run
    assert cfg.ppt.lr == 0.03 and not cfg.backbone.autocast_bf16 and cfg.pretrain_seeds == [0]
    assert [t.max_test for t in cfg.tasks] == [150, 150, 150]
    assert [i.value for i in cfg.grid.inits] == ["random", "sample_vocab", "ppt", "metapt_maml"]


def test_study_profile_has_the_design_the_evidence_issue_asks_for() -> None:
    from metapt_core.config import load_config

    cfg = load_config("study")
    assert len(cfg.pretrain_seeds) >= 3 and len(cfg.fewshot.seeds) >= 5 and len(cfg.tasks) >= 3
    assert cfg.meta.inner_lr == "auto" and cfg.meta.val_clusters >= 1 and cfg.fewshot.dev_per_class
    inits = {i.value for i in cfg.grid.inits}
    assert {"label_words", "ppt_balanced", "ppt", "metapt_maml", "random"} <= inits
    assert {p.value for p in cfg.grid.protocols} == {"fewshot", "inner"}
    # the study pre-trains as the quick look does, with the two levers that made MAML adapt
    # (docs/results.md): k = 12 clusters, two held out, 90 meta-steps validated every 10
    default = load_config("default")
    assert (cfg.pool, cfg.embed, cfg.backbone, cfg.prompt) == (
        default.pool, default.embed, default.backbone, default.prompt
    )  # fmt: skip
    assert cfg.cluster == dataclasses.replace(default.cluster, n_clusters=12)
    levers = {"meta_steps": 90, "val_clusters": 2, "val_episodes": 8, "val_every": 10,
              "checkpoint_every": 10}  # fmt: skip
    assert cfg.meta == dataclasses.replace(
        default.meta, check_episodes=cfg.meta.check_episodes, **levers
    )
