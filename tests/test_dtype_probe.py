"""bf16 or fp32 by measurement: the CPU flags pre-filter, the probe's figure cached per CPU."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from metapt_core.scoring.dtype_probe import (
    Bf16Choice,
    choose_bf16,
    cpu_model,
    linear_shapes,
)

CPU = torch.device("cpu")
NATIVE = {"avx512f", "avx512_bf16"}
EMULATED = {"avx512f", "avx512bw", "avx512_vnni"}
SHAPES = [(64, 128), (128, 64)]


def _never(shapes: Sequence[tuple[int, int]]) -> float:
    raise AssertionError("the probe ran")


def test_no_bf16_instructions_means_fp32_and_nothing_timed(tmp_path: Path) -> None:
    choice = choose_bf16(CPU, SHAPES, tmp_path / "bf16.json", flags=EMULATED, probe=_never)
    assert choice == Bf16Choice(False, "flags") and not (tmp_path / "bf16.json").exists()
    assert "no AVX512-BF16 or AMX" in choice.describe()


def test_cuda_is_bf16_without_a_probe() -> None:
    assert choose_bf16(torch.device("cuda"), SHAPES, None, probe=_never).use


@pytest.mark.parametrize(("speedup", "use"), [(1.9, True), (1.05, False), (0.7, False)])
def test_the_probe_decides_and_is_cached_per_cpu(tmp_path: Path, speedup: float, use: bool) -> None:
    cache = tmp_path / "probes" / "bf16.json"
    calls: list[list[tuple[int, int]]] = []

    def probe(shapes: Sequence[tuple[int, int]]) -> float:
        calls.append(list(shapes))
        return speedup

    first = choose_bf16(CPU, SHAPES, cache, flags=NATIVE, probe=probe)
    assert first == Bf16Choice(use, "probe", speedup) and calls == [SHAPES]
    stored = json.loads(cache.read_text())
    (key,) = stored
    assert cpu_model() in key and "64x128,128x64" in key and stored[key] == speedup
    again = choose_bf16(CPU, SHAPES, cache, flags=NATIVE, probe=_never)
    assert again == Bf16Choice(use, "cache", speedup)
    assert f"{speedup:.2f}x fp32" in again.describe()
    # other shapes are another entry, the first kept
    choose_bf16(CPU, [(32, 32)], cache, flags=NATIVE, probe=lambda s: 2.0)
    assert len(json.loads(cache.read_text())) == 2


def test_a_damaged_cache_is_measured_again(tmp_path: Path) -> None:
    cache = tmp_path / "bf16.json"
    cache.write_text("{not json")
    assert choose_bf16(CPU, SHAPES, cache, flags=NATIVE, probe=lambda s: 1.5).source == "probe"


def test_linear_shapes_are_the_most_common_without_the_vocabulary_head() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16),
        torch.nn.Linear(16, 8),
        torch.nn.Linear(8, 16),
        torch.nn.Linear(8, 1000),
    )
    assert linear_shapes(model) == [(8, 16), (16, 8)]
    assert linear_shapes(model, limit=1) == [(8, 16)]


def test_cpu_model_reads_the_model_name(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14 96-Core Processor\n")
    assert cpu_model(str(info)) == "AMD EPYC 9R14 96-Core Processor"
    assert cpu_model(str(tmp_path / "missing"))


def test_the_prompt_model_reports_its_choice(tiny_llama_path: Path, tmp_path: Path) -> None:
    """With a probe cache the model's dtype is the probe's choice (on a CPU with bf16
    instructions, timed and cached), named in its scoring path (the run tag); off when the
    config says so."""
    from metapt_core.backbone import load_backbone
    from metapt_core.config import BackboneConfig
    from metapt_core.lm import PromptModel
    from metapt_core.scoring.precision import native_bf16

    backbone = load_backbone(BackboneConfig(name_or_path=str(tiny_llama_path)))
    cache = tmp_path / "bf16.json"
    model = PromptModel(backbone, autocast_bf16=True, bf16_cache=cache)
    assert model.autocast_bf16 == model.bf16.use
    assert model.path.endswith(f"dtype {model.bf16.describe()}")
    if native_bf16(CPU):
        assert model.bf16.source == "probe" and cache.is_file()
        again = PromptModel(backbone, autocast_bf16=True, bf16_cache=cache)
        assert again.bf16 == Bf16Choice(model.bf16.use, "cache", model.bf16.speedup)
    else:
        assert model.bf16.source == "flags" and not cache.exists()
    off = PromptModel(backbone, autocast_bf16=False, bf16_cache=cache)
    assert off.bf16 == Bf16Choice(False, "config") and not off.autocast_bf16


def test_a_choice_by_flags_alone_says_which_way_it_went() -> None:
    """A model loaded without a probe cache decides on the flags: the words match the choice."""
    assert (
        Bf16Choice(True, "flags").describe() == "bf16 (AVX512-BF16 or AMX on this CPU, not timed)"
    )
    assert Bf16Choice(False, "flags").describe() == "fp32 (no AVX512-BF16 or AMX on this CPU)"
