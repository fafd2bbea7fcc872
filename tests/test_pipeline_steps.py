"""The pipeline is written once (tasks.plan.PIPELINE): the flows, the stage deployments and the
--refresh names are derived from it, and every stored stage a plan makes belongs to a step."""

from __future__ import annotations

import pytest

from metapt_core.config import load_config
from metapt_core.store import ArtifactRef
from tasks import plan


def _every_stage_plan(profile: str) -> list[plan.StagePlan]:
    """The stage plans of one run of ``profile``, with stand-in input references."""
    cfg = load_config(profile)
    ref = ArtifactRef(path="x", sha256="0" * 64)
    made = {(init, seed): ref for init, seed in plan.pretrain_runs(cfg)}
    plans = [
        plan.ingest_pool(cfg, ref),
        plan.ingest_tasks(cfg, ref, ref),
        plan.embed(cfg, ref, ref),
        plan.cluster(cfg, ref, ref),
    ]
    plans += [plan.pretrain(cfg, init, seed, ref, ref) for init, seed in plan.pretrain_runs(cfg)]
    plans += [
        plan.meta_objective(cfg, seed, ref, ref, plan.seed_prompts(cfg, made, seed))
        for seed in cfg.pretrain_seeds
    ]
    plans += [
        plan.eval_group(
            cfg, task, shots, seed, pseed, ref, ref, plan.group_prompts(cfg, made, pseed)
        )
        for task, shots, seed, pseed in plan.groups(cfg)
    ]
    plans.append(plan.report(cfg, [ref], []))
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
    from flows.stages import stage_flows, step_flows

    entries, steps = stage_flows(), step_flows()
    names = [s.name for s in plan.PIPELINE]
    assert list(entries) == names == list(steps) == list(STAGE_DEPLOYMENTS)
    assert all(f.name == f"metapt-{name}" for name, f in entries.items())
    assert all(f.name == name for name, f in steps.items())


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
