"""What each stage receives: the specs hold exactly the settings their stage may read."""

from __future__ import annotations

import dataclasses

import pytest

from metapt_core.config import MetaConfig, load_config, to_dict
from metapt_core.specs import ClusterSpec, EpisodeSettings, EvalSpec, PPTSpec, ReportSpec


def test_ppt_is_matched_to_metapt_unless_its_own_settings_are_given() -> None:
    cfg = load_config("default")
    spec = PPTSpec.of(cfg)
    # PPT's budget by hand: unset (0), ppt.steps is meta.meta_steps and ppt.batch_size the rows
    # of a meta-batch, meta_batch_size * (support_size + query_size): 7 and 3 * (5 + 2) = 21;
    # each one set is PPT's own
    meta = [
        "meta.meta_steps=7",
        "meta.meta_batch_size=3",
        "meta.support_size=5",
        "meta.query_size=2",
        "ppt.steps=0",
        "ppt.batch_size=0",
    ]
    budgets = {
        (): (7, 21),
        ("ppt.steps=11",): (11, 21),
        ("ppt.batch_size=13",): (7, 13),
        ("ppt.steps=11", "ppt.batch_size=13"): (11, 13),
    }
    for own, budget in budgets.items():
        chosen = load_config("default", overrides=meta + list(own))
        assert PPTSpec.of(chosen).ppt_budget() == budget, own
        assert chosen.ppt_budget() == budget, own
    for name in ("outer_lr", "outer_optimizer", "reptile_step", "group_tasks"):
        with pytest.raises(AttributeError):
            getattr(spec.meta, name)
    assert (spec.ppt.lr, spec.ppt.optimizer) == (cfg.meta.outer_lr, cfg.meta.outer_optimizer)
    outer = ["meta.outer_lr=0.5", "meta.outer_optimizer=sgd"]
    moved = PPTSpec.of(load_config("default", overrides=outer))
    assert (moved.ppt.lr, moved.ppt.optimizer.value) == (0.5, "sgd")
    # set explicitly, PPT's own settings win and its key stays when MetaPT's move
    own = ["ppt.lr=0.03", "ppt.optimizer=adam"]
    pinned = to_dict(PPTSpec.of(load_config("default", overrides=own)))
    assert to_dict(PPTSpec.of(load_config("default", overrides=own + outer))) == pinned
    shared = load_config("default", overrides=["meta.support_size=3"])
    assert to_dict(PPTSpec.of(shared)) != to_dict(spec)


def test_episode_settings_are_the_same_named_meta_fields() -> None:
    meta = MetaConfig(inner_lr=1.5, seed=7)
    settings = EpisodeSettings.of(meta)
    names = {f.name for f in dataclasses.fields(EpisodeSettings)}
    assert names < {f.name for f in dataclasses.fields(MetaConfig)}
    assert all(getattr(settings, n) == getattr(meta, n) for n in names)


def test_an_evaluation_group_holds_its_own_task_shots_and_seed() -> None:
    cfg = load_config("default")
    first, other = cfg.tasks[0].name, cfg.tasks[1].name
    spec = to_dict(EvalSpec.of(cfg, first, 16, 1))
    more_seeds = load_config("default", overrides=["fewshot.seeds=[0, 1, 2, 3, 4]"])
    assert to_dict(EvalSpec.of(more_seeds, first, 16, 1)) == spec
    other_task = load_config("default", overrides=[f"tasks[{other}].max_test=7"])
    assert to_dict(EvalSpec.of(other_task, first, 16, 1)) == spec
    template = load_config(
        "default", overrides=[f"tasks[{first}].template='{{text}} So: {{answer}}'"]
    )
    assert to_dict(EvalSpec.of(template, first, 16, 1)) != spec
    # the zero-shot reference is scored in the first (shots, seed) group only
    assert EvalSpec.of(cfg, first, 16, 0).zero_shot and not EvalSpec.of(cfg, first, 16, 1).zero_shot
    assert EvalSpec.of(cfg, first, 16, 0).tasks == [cfg.tasks[0]]


def test_cluster_and_report_specs() -> None:
    cfg = load_config("default")
    assert ClusterSpec.of(cfg).min_rows_per_class == cfg.min_rows_per_class()
    report = ReportSpec.of(cfg)
    assert report.grid.inits == cfg.grid.inits and report.backbone_name == cfg.backbone.name_or_path
    workers = load_config("default", overrides=["grid.max_workers=2"])
    assert to_dict(ReportSpec.of(workers)) == to_dict(report)


def test_pretraining_seeds_are_a_grid_dimension_that_keeps_stored_groups() -> None:
    from tasks import plan

    cfg = load_config("default")
    assert cfg.pretrain_seeds == [0, 1]
    task = cfg.tasks[0].name
    more = load_config("default", overrides=["grid.pretrain_seeds=[0, 1, 2]"])
    # a new pre-training seed adds groups and pre-training runs, and leaves the others' keys
    assert len(plan.groups(more)) == len(plan.groups(cfg)) // 2 * 3
    assert to_dict(EvalSpec.of(more, task, 16, 0, 1)) == to_dict(EvalSpec.of(cfg, task, 16, 0, 1))
    assert to_dict(EvalSpec.of(cfg, task, 16, 0, 0)) != to_dict(EvalSpec.of(cfg, task, 16, 0, 1))
    runs = plan.pretrain_runs(more)
    assert [(i.value, s) for i, s in runs if s == 2] == [("ppt", 2), ("metapt_maml", 2)]
    # PPT and MetaPT of one seed read that seed (their initial prompt and episodes)
    ref = plan.ArtifactRef(path="x", sha256="0" * 64)
    ppt1 = plan.pretrain_plan(cfg, runs[0][0], 1, ref, ref)
    assert (
        ppt1.spec.meta.seed == 1
        and plan.pretrain_plan(cfg, runs[1][0], 1, ref, ref).spec.meta.seed == 1
    )
    # zero-shot is scored once per task, untuned prompts once per (task, pre-training seed)
    flags = [(EvalSpec.of(cfg, task, 16, s, p).zero_shot, EvalSpec.of(cfg, task, 16, s, p).untuned)
             for s in cfg.fewshot.seeds for p in cfg.pretrain_seeds]  # fmt: skip
    assert flags == [(True, True), (False, True)] + [(False, False)] * 4
