"""The stage flows in the pipeline's order (:data:`tasks.plan.PIPELINE`), matched by name.

A step ``<name>`` is served by the flow named ``metapt-<name>``; the full pipeline, each stage
flow's upstream chain and the stage deployments all come from :func:`stage_flows`.
"""

from __future__ import annotations

from typing import Any

from tasks import plan

FLOW_PREFIX = "metapt-"


def stage_flows() -> dict[str, Any]:
    """``{step name: its Prefect flow}`` in pipeline order.

    Raises:
        LookupError: a step of the plan has no flow, or a flow no step.
    """
    from flows.cluster import cluster_flow
    from flows.embed import embed_flow
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.pretrain import meta_pretrain_flow

    flows = (ingest_flow, embed_flow, cluster_flow, meta_pretrain_flow, evaluate_flow)
    by_name = {f.name.removeprefix(FLOW_PREFIX): f for f in flows}
    steps = [s.name for s in plan.PIPELINE]
    if set(by_name) != set(steps):
        raise LookupError(f"stage flows {sorted(by_name)} do not match the plan's steps {steps}")
    return {name: by_name[name] for name in steps}


def upstream_flow(name: str) -> Any:
    """The flow of the step before ``name`` (None for the first step)."""
    before = plan.upstream_step(name)
    return stage_flows()[before.name] if before is not None else None
