"""A learned prompt as a product: peft adapter written by peft's own config class, loadable by
``PeftModel.from_pretrained`` and by ``prompt.init: file``, with a model card; the CLI's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_meta_fixtures import small_config, write_shards
from test_meta_lm import _model

from flows.cli import main
from metapt_core.assets import portable_name
from metapt_core.ppt import ppt_pretrain
from metapt_core.prompt import load_prompt
from metapt_core.prompt_card import (
    best_validation,
    evaluation_rows,
    export_prompt,
    init_name,
    objective_rows,
    render_card,
)
from metapt_core.specs import PPTSpec


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory, tiny_llama_path: Path) -> Path:
    """A PPT prompt folder from the tiny Llama (2 steps)."""
    root = tmp_path_factory.mktemp("learned")
    model = _model(tiny_llama_path)
    shards = write_shards(root / "shards", rows_per_shard=16, n_shards=3)
    cfg = small_config(meta_steps=2, meta_batch_size=2, support_size=2, query_size=2,
                       val_every=2, val_episodes=2, val_fraction=0.25)  # fmt: skip
    ppt_pretrain(shards, PPTSpec.of(cfg), model, root / "ppt")
    return root / "ppt"


def test_exported_adapter_loads_in_peft_and_as_an_initial_prompt(
    learned: Path, tiny_llama_path: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    prompt, meta = load_prompt(learned)
    results = pd.DataFrame([
        {"init": "ppt", "pretrain_seed": meta["seed"], "protocol": "fewshot", "shots": 16,
         "task": "mr", "test_accuracy": acc, "test_macro_f1": acc - 0.1, "seed": s}
        for s, acc in enumerate([0.6, 0.7])
    ] + [{"init": "random", "pretrain_seed": meta["seed"], "protocol": "fewshot", "shots": 16,
          "task": "mr", "test_accuracy": 0.1, "test_macro_f1": 0.1, "seed": 0}])  # fmt: skip
    rows = evaluation_rows(results, init_name(meta), meta["seed"])
    assert rows == [{"protocol": "fewshot", "shots": 16, "task": "mr", "accuracy": "65.0",
                     "macro_f1": "55.0", "few-shot seeds": 2}]  # fmt: skip
    out = export_prompt(learned, tmp_path / "adapter", str(tiny_llama_path), "ab" * 32,
                        record={"upstream": {"shards": "cd" * 32}}, evaluation=rows)  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["peft_version"]
    assert config["base_model_name_or_path"] == str(tiny_llama_path)
    assert (
        config["num_virtual_tokens"] == prompt.shape[0] and config["token_dim"] == prompt.shape[1]
    )
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_llama_path), out
    )
    loaded = peft_model.get_prompt_embedding_to_save(adapter_name="default")
    torch.testing.assert_close(loaded.float(), prompt, rtol=0, atol=0)
    again, again_meta = load_prompt(out)  # what prompt.init: file reads
    assert torch.equal(again, prompt) and again_meta["made_by"] == "ppt"
    card = (out / "README.md").read_text()
    assert card.startswith(f"---\nbase_model: {tiny_llama_path}\nlibrary_name: peft\n")
    assert "weights sha256 `" + "ab" * 32 in card and "shards `" + "cd" * 8 in card
    assert "| fewshot | 16 | mr | 65.0 | 55.0 | 2 |" in card
    best = best_validation(json.loads((learned / "history.json").read_text()))
    assert best is not None and f"Best validation loss {best[1]:.4f}" in card


def test_the_card_carries_its_seeds_meta_objective_check() -> None:
    check = pd.DataFrame([
        {"pretrain_seed": 0, "init": "metapt_maml", "chance": 1.0986, "loss_before": 0.9,
         "loss_after": 0.75, "after_low": 0.67, "after_high": 0.84, "trained": True,
         "beats_ppt": False},
        {"pretrain_seed": 0, "init": "ppt", "chance": 1.0986, "loss_before": 1.4,
         "loss_after": 1.33, "after_low": 1.22, "after_high": 1.43, "trained": float("nan"),
         "beats_ppt": float("nan")},
        {"pretrain_seed": 1, "init": "metapt_maml", "chance": 1.0986, "loss_before": 1.2,
         "loss_after": 1.19, "after_low": 1.1, "after_high": 1.3, "trained": False,
         "beats_ppt": False},
    ])  # fmt: skip
    rows = objective_rows(check, 0)
    assert [r["init"] for r in rows] == ["metapt_maml", "ppt"]
    assert rows[0]["loss_after"] == "0.750" and rows[0]["trained"] == "true"
    assert rows[1]["trained"] == "" and rows[0]["beats_ppt"] == "false"
    meta = {"made_by": "maml", "init": "sample_vocab", "length": 2, "dim": 4, "seed": 0}
    card = render_card(meta, [], "base", objective=rows)
    assert "## Meta-objective check of its pre-training seed" in card
    assert "chance is 1.0986" in card
    assert "| metapt_maml | 0.900 | 0.750 | 0.670 | 0.840 | true | false |" in card
    assert "1.190" not in card  # seed 1's row belongs to another prompt's card
    assert "Meta-objective" not in render_card(meta, [], "base")


def test_builtin_backbones_are_exported_under_their_hub_name() -> None:
    assert portable_name("builtin:smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert portable_name("google/flan-t5-base") == "google/flan-t5-base"
    assert portable_name("/models/local") == "/models/local"


def test_bad_export_sources_fail_in_one_line_and_write_nothing(
    learned: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = f"work_dir={tmp_path / 'work'}"
    out = tmp_path / "out"
    cases = [
        (["prompts", "export", "0" * 32, "--out", str(out), "--set", work], "source='000"),
        (
            [
                "prompts",
                "export",
                str(learned),
                "--out",
                str(out),
                "--report",
                str(tmp_path),
                "--set",
                work,
            ],
            "report=",
        ),  # fmt: skip
        (["prompts", "export", str(learned), "--out", str(tmp_path), "--set", work], "out="),
    ]
    for argv, field in cases:
        assert main(argv) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith(f"error: {field}"), errors
        assert not out.exists()
