"""Pre-training on torchrun ranks (``metapt_core.meta.launch``): the real ``torchrun`` with two
gloo ranks on the CPU and a tiny random Llama gives the prompt of one process; a rank killed
with SIGKILL ends the group, which is relaunched and resumes from the checkpoint; ranks beyond
the meta-batch are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _ranks import killing_rank_one
from test_meta_fixtures import small_config, write_shards

from metapt_core.config import PipelineConfig, from_dict, to_dict
from metapt_core.errors import ConfigError
from metapt_core.lm import load_prompt_model
from metapt_core.meta.launch import launch_pretrain, progress_of, torchrun_command
from metapt_core.meta.trainer import meta_pretrain
from metapt_core.ppt import ppt_pretrain
from metapt_core.pretraining.start import starting_prompt
from metapt_core.prompt import load_prompt
from metapt_core.specs import MetaSpec, PPTSpec
from metapt_core.tiny import make_tiny_llama

TOL = 1e-5  # ranks vs one process: the same prompt up to summation order


def tiny_config(folder: Path, **meta: object) -> PipelineConfig:
    """The tiny Llama with a plain-SGD outer step: Adam's first steps are about lr * sign(g), so
    a gradient component at rounding level could move by lr either way between rank counts."""
    data = to_dict(small_config(**{"outer_optimizer": "sgd", **meta}))
    data["backbone"]["name_or_path"] = str(folder)
    data["backbone"]["device"] = "cpu"
    data["scoring"]["max_length"] = 24
    return from_dict(PipelineConfig, data)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("launch")
    return make_tiny_llama(root / "llama"), write_shards(root / "shards")


def test_ranks_beyond_the_meta_batch_are_refused(setup: tuple[Path, Path]) -> None:
    data = to_dict(tiny_config(setup[0]))
    data["distributed"]["nproc_per_node"] = 5
    with pytest.raises(ConfigError) as err:
        from_dict(PipelineConfig, data)
    message = str(err.value)
    assert "distributed.nproc_per_node" in message and "5" in message
    assert "meta.meta_batch_size (4)" in message and "\n" not in message
    with pytest.raises(ConfigError, match="distributed.nproc_per_node"):
        launch_pretrain(tiny_config(setup[0]), setup[1], setup[1] / "x", "maml", nproc=6)


def test_command_and_progress_lines() -> None:
    cmd = torchrun_command(2, Path("c.yaml"), Path("s"), Path("o"), "ppt_balanced", Path("r"))
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[-2:] == ["--ppt", "--balanced"] and "--max_restarts=0" in cmd
    assert "--algorithm" in torchrun_command(2, Path("c"), Path("s"), Path("o"), "maml", Path("r"))
    line = "2026-12-06 05:00:00 metapt_core.meta [3/6] metapt-maml step 3: query 0.9"
    assert progress_of(line) == (3, 6, "metapt-maml step 3: query 0.9")
    assert progress_of("no progress here") is None


# One validation episode for two ranks: rank 1 validates nothing and must still reduce alike.
@pytest.mark.parametrize(("kind", "val_episodes"), [("maml", 4), ("maml", 1), ("ppt", 1)])
def test_two_torchrun_ranks_give_the_prompt_of_one_process(
    setup: tuple[Path, Path], tmp_path: Path, kind: str, val_episodes: int
) -> None:
    folder, shards = setup
    # outer lr 10: the tiny model's gradients are about 1e-4, so at 0.05 the prompt moved by
    # 9e-4 and an agreement to 1e-5 said little
    cfg = tiny_config(folder, val_episodes=val_episodes, outer_lr=10.0)
    model = load_prompt_model(cfg)
    if kind == "ppt":
        alone = ppt_pretrain(shards, PPTSpec.of(cfg), model, tmp_path / "one")
    else:
        alone = meta_pretrain(shards, MetaSpec.of(cfg), "maml", model, tmp_path / "one")  # type: ignore[arg-type]
    lines: list[str] = []
    result = launch_pretrain(cfg, shards, tmp_path / "two", kind, nproc=2, log=lines.append)
    one, _ = load_prompt(tmp_path / "one")
    two, _ = load_prompt(tmp_path / "two")
    # Two partial sums all-reduced vs one sum: float rounding only.
    torch.testing.assert_close(two, one, rtol=0, atol=TOL)
    start = starting_prompt(model, MetaSpec.of(cfg), None)
    assert (one - start).abs().max() > 100 * TOL  # it trained: the agreement is not vacuous
    assert Path(result.ref.path) == (tmp_path / "two").resolve() and result.ref.is_valid()
    for key in ("steps", "examples_seen"):
        assert result.metrics[key] == alone.metrics[key] > 0, key
    steps = [progress_of(line) for line in lines if progress_of(line)]
    assert steps and steps[-1][:2] == (cfg.meta.meta_steps, cfg.meta.meta_steps)
    assert not (tmp_path / "two.ckpt").exists()


def test_a_killed_rank_restarts_the_group_from_its_checkpoint(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    folder, shards = setup
    cfg = tiny_config(folder, meta_steps=30, checkpoint_every=2, outer_lr=10.0)
    model = load_prompt_model(cfg)
    meta_pretrain(shards, MetaSpec.of(cfg), "maml", model, tmp_path / "one")  # type: ignore[arg-type]
    out, lines = tmp_path / "two", []
    with killing_rank_one(
        lambda: (out.parent / f"{out.name}.ckpt" / "last.pt").is_file(),
        lambda cmd: str(out) in cmd and "metapt_core.meta" in cmd,
    ) as killed:
        launch_pretrain(cfg, shards, out, "maml", nproc=2, log=lines.append)
    text = "\n".join(lines)
    assert killed, "rank 1 was never seen with a checkpoint on disk"
    assert "relaunching (2 of 2)" in text and "resuming from step" in text, text[-3000:]
    one, _ = load_prompt(tmp_path / "one")
    two, _ = load_prompt(out)
    torch.testing.assert_close(two, one, rtol=0, atol=TOL)
    assert (one - starting_prompt(model, MetaSpec.of(cfg), None)).abs().max() > 100 * TOL
