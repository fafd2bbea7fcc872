"""Flow ``metapt-embed``: sentence-embed the pool (ingesting it first unless given).

prefect deployment run metapt-embed/embed -p profile=smoke --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, ref_dict, stage_flow_run
from tasks.common import outcome_of, to_ref
from tasks.embed import embed_task


@flow(name="metapt-embed", flow_run_name=flow_run_name)
def embed_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
    upstream: Refs | None = None,
    mlflow_parent_run_id: str = "",
) -> Refs:
    """Steps: (ingest) -> embeddings.npy + row_ids.parquet."""
    params = locals()  # this flow's parameters, before any other local
    with stage_flow_run("embed", params) as (ctx, refs):
        out = outcome_of(embed_task(ctx, to_ref(refs["assets"]), to_ref(refs["pool"])))
        return {**refs, "embed": ref_dict(out.ref)}
