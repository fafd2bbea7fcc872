"""Flow ``metapt``: the whole pipeline, each step a subflow, every stage cached.

metapt run --profile smoke
prefect deployment run metapt/full-pipeline -p profile=smoke --watch
prefect deployment run metapt/full-pipeline -p profile=smoke -p overrides='["cluster.n_clusters=4"]' --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import (
    Profile,
    Refs,
    RunRequest,
    entry_run_name,
    name_flow_run,
    run_entry,
    run_name,
    run_steps,
)
from metapt_core.config import PipelineConfig
from tasks import plan

LAST_STEP = plan.PIPELINE[-1].name


@flow(name="metapt", flow_run_name=entry_run_name)
def metapt_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
) -> Refs:
    """Steps: ingest -> embed -> cluster -> meta-pretrain (MetaPT, PPT) -> evaluate (grid, report).

    Args:
        profile: a bundled profile (smoke, default, study, paper, control).
        config_file: a YAML file merged over the profile.
        overrides: ``section.key=value`` settings, e.g. ``["cluster.n_clusters=4"]``.
        refresh: stages to recompute even if stored (ingest, embed, cluster, meta-pretrain,
            evaluate, all); their dependents follow when the output changes.

    Returns:
        Every stage's output reference (``{"path", "sha256"}``), the report's included, and
        ``mlflow_run_id``. A run stored whole computes nothing and is recorded as one cached
        MLflow run.
    """
    request = RunRequest.of(profile, config_file, overrides, refresh)
    return run_entry("metapt", LAST_STEP, request)


@flow(name="metapt", flow_run_name="{request.profile}", validate_parameters=False)
def resolved_pipeline_flow(request: RunRequest, config: PipelineConfig) -> Refs:
    """The whole pipeline for an entry point that has resolved ``config`` from ``request``
    already (``metapt run``): the same flow as :func:`metapt_flow`, without resolving again."""
    name_flow_run(run_name(request.profile, config))
    return run_steps("metapt", request, config, LAST_STEP)
