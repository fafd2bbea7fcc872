"""Flow ``metapt-cluster``: cluster the pool into auxiliary tasks (upstream stages first).

prefect deployment run metapt-cluster/cluster -p profile=smoke -p overrides='["cluster.n_clusters=4"]' --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, ref_dict, stage_flow_run
from tasks.cluster import cluster_task
from tasks.common import outcome_of, to_ref


@flow(name="metapt-cluster", flow_run_name=flow_run_name)
def cluster_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
    upstream: Refs | None = None,
    mlflow_parent_run_id: str = "",
) -> Refs:
    """Steps: (ingest, embed) -> shards/ + diagnostics/."""
    params = locals()  # this flow's parameters, before any other local
    with stage_flow_run("cluster", params) as (ctx, refs):
        out = outcome_of(cluster_task(ctx, to_ref(refs["pool"]), to_ref(refs["embed"])))
        return {**refs, "shards": ref_dict(out.ref)}
