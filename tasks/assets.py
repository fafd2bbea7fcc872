"""Prefect task around ``metapt_core.assets.prepare_assets``."""

from __future__ import annotations

from prefect import task

from metapt_core.assets import prepare_assets
from metapt_core.config import PipelineConfig
from metapt_core.store import ArtifactRef
from tasks.common import TASK_OPTIONS, assets_ref, no_cache
from tasks.progress import StageProgress


@task(name="assets", cache_policy=no_cache(), **TASK_OPTIONS)
def prepare_assets_task(cfg: PipelineConfig) -> ArtifactRef:
    """Prepare the embedded assets (idempotent; the assets module keeps its own cache).

    Returns:
        A reference to the assets folder whose sha256 covers every asset's manifest.
    """
    prepare_assets(cfg.assets_path, progress=StageProgress("assets"))
    return assets_ref(cfg)
