"""Flow ``metapt-cluster``: cluster the pool into auxiliary tasks (upstream stages first).

prefect deployment run metapt-cluster/cluster -p profile=smoke -p overrides='["cluster.n_clusters=4"]' --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, pipeline_run, ref_dict, stage_kwargs
from flows.embed import embed_flow
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
    with pipeline_run(
        "cluster", profile, config_file, overrides, refresh, mlflow_parent_run_id
    ) as ctx:
        refs = dict(upstream or {})
        if "embed" not in refs:
            refs = embed_flow(**stage_kwargs(profile, config_file, overrides, refresh, refs, ctx))
        out = outcome_of(cluster_task(ctx, to_ref(refs["pool"]), to_ref(refs["embed"])))
        return {**refs, "shards": ref_dict(out.ref)}
