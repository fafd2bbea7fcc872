"""The step flows and their entry flows in the pipeline's order (:data:`tasks.plan.PIPELINE`).

A step ``<name>`` runs as the subflow ``<name>`` (handed the run's context and the references
made so far) and is served on its own by the entry flow ``metapt-<name>`` (its deployment,
which runs the steps before it too). The full pipeline, every entry flow's chain and the step
deployments all come from these two maps.
"""

from __future__ import annotations

from typing import Any

from tasks import plan

FLOW_PREFIX = "metapt-"


def _by_step(flows: tuple[Any, ...], prefix: str) -> dict[str, Any]:
    """``{step name: flow}`` in pipeline order, each flow named ``<prefix><step name>``.

    Raises:
        LookupError: a step of the plan has no flow, or a flow no step.
    """
    by_name = {f.name.removeprefix(prefix): f for f in flows}
    steps = [s.name for s in plan.PIPELINE]
    if set(by_name) != set(steps):
        raise LookupError(f"flows {sorted(by_name)} do not match the plan's steps {steps}")
    return {name: by_name[name] for name in steps}


def step_flows() -> dict[str, Any]:
    """``{step name: its subflow}`` in pipeline order."""
    from flows.cluster import cluster_step
    from flows.embed import embed_step
    from flows.evaluate import evaluate_step
    from flows.ingest import ingest_step
    from flows.pretrain import meta_pretrain_step

    flows = (ingest_step, embed_step, cluster_step, meta_pretrain_step, evaluate_step)
    return _by_step(flows, "")


def stage_flows() -> dict[str, Any]:
    """``{step name: its entry flow}`` (``metapt-<name>``, what its deployment serves)."""
    from flows.cluster import cluster_flow
    from flows.embed import embed_flow
    from flows.evaluate import evaluate_flow
    from flows.ingest import ingest_flow
    from flows.pretrain import meta_pretrain_flow

    flows = (ingest_flow, embed_flow, cluster_flow, meta_pretrain_flow, evaluate_flow)
    return _by_step(flows, FLOW_PREFIX)
