"""Flows of the cluster step: the pool's embeddings clustered into auxiliary-task shards.

prefect deployment run metapt-cluster/cluster -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import Profile, Refs, RunRequest, entry_run_name, run_entry
from tasks.cluster import cluster_task
from tasks.common import outcome_of
from tasks.plan import Outputs
from tasks.stage import RunContext


@flow(name="cluster", flow_run_name="cluster", validate_parameters=False)
def cluster_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: embeddings -> shards/ + diagnostics/."""
    out = outcome_of(cluster_task(run, outputs.need("pool"), outputs.need("embed")))
    return replace(outputs, shards=out.ref)


@flow(name="metapt-cluster", flow_run_name=entry_run_name)
def cluster_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
) -> Refs:
    """The steps up to cluster (its deployment; earlier stages served from the store)."""
    request = RunRequest.of(profile, config_file, overrides, refresh)
    return run_entry("metapt-cluster", "cluster", request)
