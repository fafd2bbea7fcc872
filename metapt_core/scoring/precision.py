"""bf16 autocast with the backbone's weights cast once.

Under ``torch.autocast`` a frozen fp32 weight is cast to bf16 on every call: autocast caches
casts only of leaves that require grad, and a frozen backbone's do not. :func:`autocast_model`
gives a copy whose ``nn.Linear`` weights are bf16 already, so autocast finds nothing to cast.
Autocast rounds fp32 to bf16 the same way ``Tensor.to`` does, so the scores are bit for bit
those of autocast over the fp32 weights. Embeddings (and a head tied to them) and norms stay
fp32: the lookup and the elementwise ops ran in fp32 under autocast too. Prompts and optimiser
state are never touched: they stay fp32.
"""

from __future__ import annotations

import copy
import threading
import weakref
from typing import Any

import torch

_COPIES: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of bf16 dot products


def cpuinfo_field(name: str, path: str = "/proc/cpuinfo") -> str | None:
    """The first ``name : value`` line's value in ``/proc/cpuinfo`` (Linux); None where the
    file cannot be read or has no such line."""
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (Linux); None where it cannot be read."""
    flags = cpuinfo_field("flags", path)
    return None if flags is None else set(flags.split())


def native_bf16(device: torch.device, flags: set[str] | None = None) -> bool:
    """True where bf16 autocast is fast: CUDA, or a CPU with bf16 dot-product instructions
    (AVX512-BF16 or AMX). On other CPUs bf16 is emulated and slower than fp32.

    oneDNN's own test (``_is_mkldnn_bf16_supported``) accepts any AVX-512 CPU, emulation
    included (Skylake, Cascade Lake, Ice Lake), so on Linux the CPU flags decide; elsewhere
    oneDNN's answer is kept. ``flags``: the CPU's flags (default: read ``/proc/cpuinfo``).
    """
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    flags = cpu_flags() if flags is None else flags
    if flags is not None:
        return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_model(model: Any) -> Any:
    """A copy of ``model`` (once per model and process) whose linear layers hold bf16 weights.

    Parameters of the input and output embeddings are shared with ``model``, not copied, so
    the copy costs the linear layers in bf16 (about half their fp32 size). Use it only under
    ``torch.autocast(dtype=torch.bfloat16)``: outside autocast its linear layers would meet
    fp32 inputs.
    """
    if next(model.parameters()).dtype != torch.float32:
        return model
    with _LOCK:
        cached = _COPIES.get(model)
        if cached is not None:
            return cached
        shared = {id(p): p for m in (model.get_input_embeddings(), model.get_output_embeddings())
                  if m is not None for p in m.parameters()}  # fmt: skip
        memo: dict[int, Any] = dict(shared)
        twin = copy.deepcopy(model, memo)
        keep = {id(p) for p in shared.values()}
        for module in twin.modules():
            if isinstance(module, torch.nn.Linear) and id(module.weight) not in keep:
                module.weight = torch.nn.Parameter(
                    module.weight.detach().to(torch.bfloat16), requires_grad=False
                )
        twin.requires_grad_(False)
        twin.eval()
        _COPIES[model] = twin
        return twin
