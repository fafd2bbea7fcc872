"""Flow ``metapt``: the whole pipeline, each stage a subflow, every stage cached.

metapt run --profile smoke
prefect deployment run metapt/full-pipeline -p profile=smoke --watch
prefect deployment run metapt/full-pipeline -p profile=smoke -p overrides='["cluster.n_clusters=4"]' --watch
"""

from __future__ import annotations

from prefect import flow

from flows.context import Profile, Refs, flow_run_name, pipeline_run, stage_kwargs
from flows.stages import stage_flows


@flow(name="metapt", flow_run_name=flow_run_name)
def metapt_flow(
    profile: Profile = "default",
    config_file: str = "",
    overrides: list[str] | str | None = None,
    refresh: list[str] | str | None = None,
) -> Refs:
    """Steps: ingest -> embed -> cluster -> meta-pretrain (MetaPT, PPT) -> evaluate (grid, report).

    Args:
        profile: a bundled profile (smoke, default, study, paper).
        config_file: a YAML file merged over the profile.
        overrides: ``section.key=value`` settings, e.g. ``["cluster.n_clusters=4"]``.
        refresh: stages to recompute even if stored (ingest, embed, cluster, meta-pretrain,
            evaluate, all); their dependents follow when the output changes.

    Returns:
        Every stage's output reference (``{"path", "sha256"}``), the report's included, and
        ``mlflow_run_id``.
    """
    with pipeline_run("metapt", profile, config_file, overrides, refresh, "") as ctx:
        refs: Refs = {}
        for stage_flow in stage_flows().values():  # the plan's steps, in order
            refs = stage_flow(**stage_kwargs(profile, config_file, overrides, refresh, refs, ctx))
        return {**refs, "mlflow_run_id": {"id": ctx.tracker.parent_run_id}}
