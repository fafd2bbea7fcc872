"""Flow ``metapt-meta-pretrain``: MetaPT prompts (one per meta-learner in the grid) and PPT.

prefect deployment run metapt-meta-pretrain/meta-pretrain -p profile=smoke --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, ref_dict, stage_flow_run
from metapt_core.config import InitMethod
from tasks import plan
from tasks.common import outcome_of, to_ref
from tasks.meta import meta_pretrain_task
from tasks.objective import meta_objective_task
from tasks.ppt import ppt_task

PROMPT_PREFIX = plan.PROMPT_PREFIX


@flow(name="metapt-meta-pretrain", flow_run_name=flow_run_name)
def meta_pretrain_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
    upstream: Refs | None = None,
    mlflow_parent_run_id: str = "",
) -> Refs:
    """Steps: (ingest, embed, cluster) -> a prompt folder per pre-trained initialisation -> the
    meta-objective check per pre-training seed.

    Returns the upstream refs plus ``prompt:<init>@<seed>`` for each pre-trained init of
    ``grid.inits`` (PPT, class-balanced PPT, MetaPT variants) and each pre-training seed, and
    ``objective:<seed>``, each seed's meta-objective check (``meta_objective.csv``).
    """
    params = locals()  # this flow's parameters, before any other local
    with stage_flow_run("meta-pretrain", params) as (ctx, refs):
        assets, shards = to_ref(refs["assets"]), to_ref(refs["shards"])
        for init, seed in plan.pretrain_runs(ctx.cfg):
            algorithm = init.meta_algorithm
            if algorithm is None:
                balanced = init is InitMethod.PPT_BALANCED
                out = outcome_of(ppt_task(ctx, assets, shards, seed, balanced))
            else:
                out = outcome_of(meta_pretrain_task(ctx, algorithm, assets, shards, seed))
            refs[plan.prompt_key(init, seed)] = ref_dict(out.ref)
        # The meta-objective check of each seed: did MetaPT lower the loss MAML minimises?
        made = {k: to_ref(v) for k, v in refs.items() if k.startswith(PROMPT_PREFIX)}
        for seed in ctx.cfg.pretrain_seeds if ctx.cfg.meta.check_episodes > 0 else []:
            prompts = plan.seed_prompts(ctx.cfg, made, seed)
            if prompts:
                check = outcome_of(meta_objective_task(ctx, assets, shards, seed, prompts))
                refs[plan.objective_key(seed)] = ref_dict(check.ref)
        return refs
