"""Flow ``metapt-ingest``: prepare the assets, ingest the pool and the downstream tasks.

prefect deployment run metapt-ingest/ingest -p profile=smoke --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, ref_dict, stage_flow_run
from tasks.assets import prepare_assets_task
from tasks.common import outcome_of
from tasks.ingest import ingest_pool_task, ingest_tasks_task


@flow(name="metapt-ingest", flow_run_name=flow_run_name)
def ingest_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
    upstream: Refs | None = None,
    mlflow_parent_run_id: str = "",
) -> Refs:
    """Steps: assets -> pool.parquet -> tasks/<task>/{train,test}.parquet."""
    params = locals()  # this flow's parameters, before any other local
    with stage_flow_run("ingest", params) as (ctx, refs):
        assets = prepare_assets_task(ctx.cfg)
        pool = outcome_of(ingest_pool_task(ctx, assets))
        tasks = outcome_of(ingest_tasks_task(ctx, assets, pool.ref))
        return {
            **refs,
            "assets": ref_dict(assets),
            "pool": ref_dict(pool.ref),
            "tasks": ref_dict(tasks.ref),
        }
