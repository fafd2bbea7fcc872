"""Flows of the embed step: sentence embeddings of the pool.

prefect deployment run metapt-embed/embed -p profile=smoke --watch
"""

from __future__ import annotations

from dataclasses import replace

from prefect import flow

from flows.context import entry_flow
from tasks.common import outcome_of
from tasks.embed import embed_task
from tasks.plan import Outputs
from tasks.stage import RunContext


@flow(name="embed", flow_run_name="embed", validate_parameters=False)
def embed_step(run: RunContext, outputs: Outputs) -> Outputs:
    """Steps: pool.parquet -> embeddings.npy + row_ids.parquet."""
    out = outcome_of(embed_task(run, outputs.need("assets"), outputs.need("pool")))
    return replace(outputs, embed=out.ref)


embed_flow = entry_flow("embed", __name__)
