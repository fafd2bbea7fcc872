"""The meta-pretraining loop on the toy prompt model: outputs, exact resume, frozen backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_meta_fixtures import small_config, write_shards

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.toy import ToyPromptModel
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.pretraining.checkpoint import checkpoint_dir, load_checkpoint
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec


def _toy() -> ToyPromptModel:
    return ToyPromptModel(embed_dim=6, n_classes=3, seed=1, dtype=torch.float32)


def _init(model: ToyPromptModel) -> torch.Tensor:
    return model.initial_prompt(3, torch.Generator().manual_seed(0))


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("algorithm", list(MetaAlgorithm))
def test_meta_pretrain_writes_prompt_and_history(tmp_path: Path, algorithm: MetaAlgorithm) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = small_config(meta_steps=4)
    seen: list[int] = []
    out = tmp_path / "out"
    result = meta_pretrain(
        shards,
        MetaSpec.of(cfg),
        algorithm,
        model,
        out,
        progress=lambda d, t, m: seen.append(d),
        initial_prompt=_init(model),
    )
    prompt, meta = load_prompt(out)
    assert prompt.shape == (3, 6)
    assert not torch.equal(prompt, _init(model))  # it trained
    assert meta["algorithm"] == algorithm.value
    history = json.loads((out / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1, 2, 3, 4]
    assert "val_loss" in history[0] and "val_acc" in history[2] and "val_loss" in history[4]
    assert all(h["query_loss"] > 0 for h in history[1:])
    assert seen == [1, 2, 3, 4]
    assert result.metrics["examples_seen"] == 4 * 4 * 6
    assert result.ref.is_valid()
    assert not checkpoint_dir(out).exists()  # scratch removed, never inside the artifact
    assert sorted(p.name for p in out.iterdir()) == [
        "history.json",
        "prompt.json",
        "prompt.safetensors",
    ]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("algorithm", [MetaAlgorithm.MAML, MetaAlgorithm.REPTILE])
def test_resume_after_crash_is_bit_identical(tmp_path: Path, algorithm: MetaAlgorithm) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    spec = MetaSpec.of(small_config(meta_steps=7, checkpoint_every=2, val_every=3))
    whole = meta_pretrain(
        shards, spec, algorithm, model, tmp_path / "a", initial_prompt=_init(model)
    )

    def crash_at_5(done: int, total: int, message: str) -> None:
        if done == 5:
            raise Crash("simulated failure")

    out = tmp_path / "b"
    with pytest.raises(Crash):
        meta_pretrain(
            shards, spec, algorithm, model, out, progress=crash_at_5, initial_prompt=_init(model)
        )
    assert not out.exists()
    state = load_checkpoint(checkpoint_dir(out), _fingerprint_of(checkpoint_dir(out)))
    assert state is not None and state.step == 4
    resumed = meta_pretrain(shards, spec, algorithm, model, out, initial_prompt=_init(model))
    assert torch.equal(load_prompt(out)[0], load_prompt(tmp_path / "a")[0])
    assert resumed.history == whole.history


def test_checkpoint_of_other_settings_is_ignored(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=5, checkpoint_every=2)

    def crash_at_3(done: int, total: int, message: str) -> None:
        if done == 3:
            raise Crash("simulated failure")

    out = tmp_path / "b"
    with pytest.raises(Crash):
        meta_pretrain(
            shards,
            MetaSpec.of(cfg),
            MetaAlgorithm.FOMAML,
            model,
            out,
            progress=crash_at_3,
            initial_prompt=_init(model),
        )
    other = small_config(meta_steps=5, checkpoint_every=2, inner_lr=0.1)
    steps: list[int] = []
    meta_pretrain(
        shards,
        MetaSpec.of(other),
        MetaAlgorithm.FOMAML,
        model,
        out,
        initial_prompt=_init(model),
        progress=lambda d, t, m: steps.append(d),
    )
    assert steps == [1, 2, 3, 4, 5]  # started over


def test_no_resume_starts_over(tmp_path: Path) -> None:
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=4, checkpoint_every=1)

    def crash_at_3(done: int, total: int, message: str) -> None:
        if done == 3:
            raise Crash("simulated failure")

    out = tmp_path / "b"
    with pytest.raises(Crash):
        meta_pretrain(
            shards,
            MetaSpec.of(cfg),
            MetaAlgorithm.FOMAML,
            model,
            out,
            progress=crash_at_3,
            initial_prompt=_init(model),
        )
    steps: list[int] = []
    meta_pretrain(
        shards,
        MetaSpec.of(cfg),
        MetaAlgorithm.FOMAML,
        model,
        out,
        initial_prompt=_init(model),
        resume=False,
        progress=lambda d, t, m: steps.append(d),
    )
    assert steps == [1, 2, 3, 4]


def _fingerprint_of(folder: Path) -> str:
    payload = torch.load(folder / "last.pt", weights_only=True)
    return str(payload["fingerprint"])


def test_step_zero_validation_scores_the_curvature_sized_rule(tmp_path: Path) -> None:
    """The initial prompt is validated with the rate training starts with (alpha capped by
    the curvature at the initial prompt), not the uncapped calibrated one: under keep_best the
    step-0 record competes with the others, so it must score the same rule; and every
    validation says which rate it used."""
    shards = write_shards(tmp_path / "shards")
    model = _toy()
    cfg = small_config(meta_steps=4, inner_lr=50.0, curvature_scale=1.0, keep_best=True)
    meta_pretrain(
        shards,
        MetaSpec.of(cfg),
        MetaAlgorithm.MAML,
        model,
        tmp_path / "out",
        initial_prompt=_init(model),
    )
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    first = history[1]
    assert first["inner_lr"] == pytest.approx(1.0 / first["lambda_max"])
    assert first["inner_lr"] < 50.0
    assert history[0]["inner_lr"] == first["inner_lr"]  # step 0 scored the capped rule
    assert all("inner_lr" in h for h in history if "val_loss" in h)
    # the diagnostic support loss at the adapted prompt, logged where the curvature was sized:
    # at alpha = 1 / lambda_max the inner step lowers the loss it stepped on
    assert first["support_loss_after"] < first["support_loss"]
    logged = [h["step"] for h in history if "support_loss_after" in h]
    assert logged == [h["step"] for h in history if "lambda_max" in h] and 1 in logged
