"""Flows of the meta-pretrain step: MetaPT prompts (one per meta-learner in the grid), PPT, and
each pre-training seed's meta-objective check.

prefect deployment run metapt-meta-pretrain/meta-pretrain -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import entry_flow
from metapt_core.config import InitMethod
from metapt_core.store import ArtifactRef
from tasks import plan
from tasks.common import outcome_of
from tasks.meta import meta_pretrain_task
from tasks.objective import meta_objective_task
from tasks.plan import Outputs
from tasks.ppt import ppt_task
from tasks.stage import RunContext


@flow(name="meta-pretrain", flow_run_name="meta-pretrain", validate_parameters=False)
def meta_pretrain_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: shards -> a prompt folder per pre-trained initialisation of ``grid.inits`` (PPT,
    class-balanced PPT, MetaPT variants) and pre-training seed -> the meta-objective check
    (``meta_objective.csv``) per pre-training seed."""
    assets, shards = outputs.need("assets"), outputs.need("shards")
    prompts: dict[tuple[InitMethod, int], ArtifactRef] = {}
    for init, seed in plan.pretrain_runs(run.cfg):
        algorithm = init.meta_algorithm
        if algorithm is None:
            balanced = init is InitMethod.PPT_BALANCED
            out = outcome_of(ppt_task(run, assets, shards, seed, balanced))
        else:
            out = outcome_of(meta_pretrain_task(run, algorithm, assets, shards, seed))
        prompts[init, seed] = out.ref
    # The meta-objective check of each seed: did MetaPT lower the loss MAML minimises?
    objectives: dict[int, ArtifactRef] = {}
    for seed in run.cfg.pretrain_seeds if run.cfg.meta.check_episodes > 0 else []:
        seed_prompts = plan.seed_prompts(run.cfg, prompts, seed)
        if seed_prompts:
            check = outcome_of(meta_objective_task(run, assets, shards, seed, seed_prompts))
            objectives[seed] = check.ref
    return replace(outputs, prompts=prompts, objectives=objectives)


meta_pretrain_flow = entry_flow("meta-pretrain", __name__)
