"""Flows of the ingest step: prepare the assets, ingest the pool and the target tasks.

prefect deployment run metapt-ingest/ingest -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import entry_flow
from tasks.assets import prepare_assets_task
from tasks.common import outcome_of
from tasks.ingest import ingest_pool_task, ingest_tasks_task
from tasks.plan import Outputs
from tasks.stage import RunContext


@flow(name="ingest", flow_run_name="ingest", validate_parameters=False)
def ingest_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: assets -> pool.parquet -> tasks/<task>/{train,test}.parquet."""
    assets = prepare_assets_task(run.cfg)
    pool = outcome_of(ingest_pool_task(run, assets))
    tasks = outcome_of(ingest_tasks_task(run, assets, pool.ref))
    return replace(outputs, assets=assets, pool=pool.ref, tasks=tasks.ref)


ingest_flow = entry_flow("ingest", __name__)
