"""Serve every deployment from one long-lived process (started by ``make serve``).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Deployments: ``metapt/full-pipeline`` and ``metapt-<stage>/<stage>`` for ingest, embed, cluster,
meta-pretrain and evaluate; all take ``profile``, ``config_file``, ``overrides``, ``refresh``:

    prefect deployment run metapt/full-pipeline -p profile=smoke --watch
    prefect deployment run metapt-cluster/cluster -p profile=smoke -p overrides='["cluster.n_clusters=4"]' --watch
"""

from __future__ import annotations

from typing import Any

import deployments  # noqa: F401  (environment defaults)
from tasks.plan import PIPELINE

FULL_PIPELINE = "full-pipeline"
STAGE_DEPLOYMENTS = tuple(step.name for step in PIPELINE)  # metapt-<step>/<step>


def build_deployments() -> list[Any]:
    """The runner deployments, entry points given as module paths (independent of the cwd)."""
    from prefect.deployments.runner import EntrypointType

    from flows.metapt import metapt_flow
    from flows.steps import entry_flows

    # One run at a time per deployment (the serve process belongs to one work folder); runs of
    # different deployments may overlap safely: each stage key is computed once, under its lock.
    options: dict[str, Any] = {
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "tags": ["metapt"],
        "concurrency_limit": 1,
    }
    built = [
        metapt_flow.to_deployment(
            name=FULL_PIPELINE,
            description="The whole MetaPT pipeline, cached stage by stage.",
            **options,
        )
    ]
    for name, step_flow in entry_flows().items():
        built.append(
            step_flow.to_deployment(
                name=name,
                description=f"The {name} step (earlier steps served from the store).",
                **options,
            )
        )
    return built


def main() -> None:
    from prefect import serve

    serve(*build_deployments(), pause_on_shutdown=False)


if __name__ == "__main__":
    main()
