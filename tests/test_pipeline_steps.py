"""The pipeline is written once (tasks.plan.PIPELINE): the flows, the stage deployments and the
--refresh names are derived from it, and every stored stage a plan makes belongs to a step."""

from __future__ import annotations

import pytest

from metapt_core.config import load_config
from metapt_core.store import ArtifactRef
from tasks import plan


def _stand_in(wave: plan.Wave) -> list[ArtifactRef]:
    """A wave answered with one distinct stand-in reference per stage."""
    return [ArtifactRef(path=label, sha256="0" * 64) for label, _ in wave]


def _every_stage_plan(profile: str) -> list[plan.StagePlan]:
    """The stage plans of one run of ``profile``, as the plan's walk yields them."""
    cfg = load_config(profile)
    plans: list[plan.StagePlan] = []

    def serve(wave: plan.Wave) -> list[ArtifactRef]:
        plans.extend(stage for _, stage in wave)
        return _stand_in(wave)

    assert plan.follow(cfg, serve) is not None
    return plans


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_every_stored_stage_belongs_to_exactly_one_step(profile: str) -> None:
    made = {stage_plan.stage for stage_plan in _every_stage_plan(profile)}
    owners = {stage: [s.name for s in plan.PIPELINE if stage in s.stages] for stage in made}
    assert {stage: names for stage, names in owners.items() if len(names) != 1} == {}
    # and no step names a stage no plan makes
    assert {stage for s in plan.PIPELINE for stage in s.stages} == made


def test_refresh_names_cover_every_step_and_stage() -> None:
    from tasks.stage import REFRESH_GROUPS, expand_refresh

    assert [s.name for s in plan.PIPELINE] == [n for n in REFRESH_GROUPS if n in
                                              {s.name for s in plan.PIPELINE}]  # fmt: skip
    assert set(REFRESH_GROUPS["all"]) == {stage for s in plan.PIPELINE for stage in s.stages}
    for each in plan.PIPELINE:
        assert set(expand_refresh([each.name])) >= set(each.stages)
    assert set(expand_refresh(["ppt"])) == {"ppt", "meta-objective"}


def test_the_flows_and_deployments_follow_the_plan() -> None:
    from deployments.serve import STAGE_DEPLOYMENTS
    from flows.steps import entry_flows, step_flows

    entries, steps = entry_flows(), step_flows()
    names = [s.name for s in plan.PIPELINE]
    assert list(entries) == names == list(steps) == list(STAGE_DEPLOYMENTS)
    assert all(f.name == f"metapt-{name}" for name, f in entries.items())
    assert all(f.name == name for name, f in steps.items())


def test_every_stored_stage_runs_as_the_prefect_task_named_after_it() -> None:
    from flows.steps import stage_tasks

    tasks = stage_tasks()  # raises when a stage of the plan has no task, or a task no stage
    assert sorted(tasks) == sorted({stage for s in plan.PIPELINE for stage in s.stages})


def test_every_step_needs_only_what_an_earlier_step_makes() -> None:
    fields = set(plan.Outputs.__dataclass_fields__)
    made: set[str] = set()
    for each in plan.PIPELINE:
        assert set(each.needs) <= made, each.name
        assert set(each.makes) <= fields and not set(each.makes) & made, each.name
        made |= set(each.makes)
    assert made == fields  # every reference a run hands on is made by one step


def test_a_missing_reference_names_itself() -> None:
    with pytest.raises(LookupError, match="'shards'"):
        plan.Outputs().need("shards")


def _drive(steps: plan.Walk) -> tuple[list[str], plan.Outputs]:
    """The stage names one step's walk yields, answered by stand-ins, and what it returns."""
    yielded: list[str] = []
    refs: list[ArtifactRef] | None = None
    try:
        while True:
            wave = steps.send(refs) if refs is not None else next(steps)
            yielded.extend(stage.stage for _, stage in wave)
            refs = _stand_in(wave)
    except StopIteration as done:
        return yielded, done.value


@pytest.mark.parametrize("profile", ["smoke", "default"])
def test_each_steps_walk_makes_its_stages_from_its_needs_alone(profile: str) -> None:
    """Driven from only the references its step ``needs``, a walk yields exactly the step's
    stages and fills exactly what it ``makes`` (a walk reading anything else raises)."""
    cfg = load_config(profile)
    full = plan.follow(cfg, _stand_in)
    assert full is not None
    for each in plan.PIPELINE:
        given = plan.Outputs(**{name: getattr(full, name) for name in each.needs})
        yielded, made = _drive(plan.walk(each.name, cfg, given))
        assert set(yielded) == set(each.stages), each.name
        filled = {
            name for name in plan.Outputs.__dataclass_fields__
            if getattr(made, name) != getattr(given, name)
        }  # fmt: skip
        assert filled == set(each.makes), each.name


def test_follow_stops_at_the_first_stage_it_cannot_serve() -> None:
    cfg = load_config("smoke")
    asked: list[str] = []

    def serve(wave: plan.Wave) -> list[ArtifactRef] | None:
        asked.extend(label for label, _ in wave)
        return None if any(stage.stage == "cluster" for _, stage in wave) else _stand_in(wave)

    assert plan.follow(cfg, serve) is None
    assert asked == ["ingest-pool", "ingest-tasks", "embed", "cluster"]


def test_a_failed_group_is_left_out_of_the_report_and_named_in_it() -> None:
    """Answered None for one evaluation group (it failed), the evaluate walk makes the report
    over the other groups, in the grid's order, and names the failed one; the report reads back
    exactly those groups and each seed's check."""
    cfg = load_config("default")
    full = plan.follow(cfg, _stand_in)
    assert full is not None
    steps = plan.walk("evaluate", cfg, full)
    groups = next(steps)
    failed = groups[1][0]
    answers: list[ArtifactRef | None] = list(_stand_in(groups))
    answers[1] = None
    ((label, report),) = steps.send(answers)
    assert label == "report"
    assert report.extra["failed"] == [failed]
    read, checks = plan.report_inputs(report)
    assert read == [ref for ref in answers if ref is not None]
    assert checks == dict(full.objectives) and len(checks) == len(cfg.pretrain_seeds)
    group = groups[0][1]
    assert plan.prompt_inputs(group) == {
        init.value: full.prompts[init, group.spec.pretrain_seed]
        for init in cfg.grid.inits
        if init.is_pretrained
    }


def test_a_stage_other_than_a_group_may_not_come_back_empty() -> None:
    given = ArtifactRef(path="given", sha256="0" * 64)
    steps = plan.walk("cluster", load_config("smoke"), plan.Outputs(pool=given, embed=given))
    next(steps)
    with pytest.raises(LookupError, match="evaluation group"):
        steps.send([None])
