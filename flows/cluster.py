"""Flows of the cluster step: the pool's embeddings clustered into auxiliary-task shards.

prefect deployment run metapt-cluster/cluster -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import entry_flow
from tasks.cluster import cluster_task
from tasks.common import outcome_of
from tasks.plan import Outputs
from tasks.stage import RunContext


@flow(name="cluster", flow_run_name="cluster", validate_parameters=False)
def cluster_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: embeddings -> shards/ + diagnostics/."""
    out = outcome_of(cluster_task(run, outputs.need("pool"), outputs.need("embed")))
    return replace(outputs, shards=out.ref)


cluster_flow = entry_flow("cluster", __name__)
