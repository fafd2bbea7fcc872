"""Flows of the embed step: sentence embeddings of the pool.

prefect deployment run metapt-embed/embed -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import Profile, Refs, RunRequest, entry_run_name, run_entry
from tasks.common import outcome_of
from tasks.embed import embed_task
from tasks.plan import Outputs
from tasks.stage import RunContext


@flow(name="embed", flow_run_name="embed", validate_parameters=False)
def embed_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: pool.parquet -> embeddings.npy + row_ids.parquet."""
    out = outcome_of(embed_task(run, outputs.need("assets"), outputs.need("pool")))
    return replace(outputs, embed=out.ref)


@flow(name="metapt-embed", flow_run_name=entry_run_name)
def embed_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
) -> Refs:
    """The steps up to embed (its deployment; the ingest step's stages served from the store)."""
    request = RunRequest.of(profile, config_file, overrides, refresh)
    return run_entry("metapt-embed", "embed", request)
