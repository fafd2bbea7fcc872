"""bf16 or fp32, chosen by measurement: the CPU flags as a pre-filter, then a short timing.

A CPU with bf16 dot-product instructions (AVX512-BF16, AMX) is not always faster in bf16 at a
given model's shapes: AMX is about 4x AVX512-BF16 at bf16 matmuls, and small linears can be
dominated by the casts around them. :func:`choose_bf16` times the backbone's own linear shapes,

    speedup = sum_s t_fp32(s) / sum_s t_bf16(s),   t(s) = median over repeats of
              F.linear(x[rows, in_s], W[out_s, in_s]) in that dtype,

and uses bf16 where ``speedup >= threshold``. The figure is cached in a JSON file keyed by the
CPU's model name, torch's version, the thread count and the shapes, so a machine measures once
and every later run (and every process of one run) makes the same choice.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from metapt_core.scoring.precision import cpu_flags, cpuinfo_field, native_bf16
from metapt_core.store import atomic_write_json

THRESHOLD = 1.1  # bf16 must be at least this much faster than fp32 to be used

Shape = tuple[int, int]  # (in_features, out_features) of a linear layer


@dataclass(frozen=True)
class Bf16Choice:
    """Whether the backbone runs under bf16 autocast, and why.

    ``speedup``: fp32 time over bf16 time at the backbone's linear shapes (None when nothing
    was timed); ``source``: ``"cuda"``, ``"flags"`` (the CPU flags alone decided, nothing timed),
    ``"probe"`` (timed now), ``"cache"`` (timed earlier on this CPU), ``"config"`` (off).
    """

    use: bool
    source: str
    speedup: float | None = None

    def describe(self) -> str:
        """The choice in words, e.g. ``"bf16 (2.15x fp32 at the backbone's linears, measured
        now)"`` or ``"fp32 (no AVX512-BF16 or AMX on this CPU)"``."""
        name = "bf16" if self.use else "fp32"
        if self.speedup is not None:
            when = "measured now" if self.source == "probe" else "measured earlier on this CPU"
            return f"{name} ({self.speedup:.2f}x fp32 at the backbone's linears, {when})"
        flags = (
            "AVX512-BF16 or AMX on this CPU, not timed"
            if self.use
            else "no AVX512-BF16 or AMX on this CPU"
        )
        reason = {
            "cuda": "CUDA",
            "flags": flags,
            "config": "backbone.autocast_bf16 is false",
        }.get(self.source, self.source)
        return f"{name} ({reason})"


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    return (
        cpuinfo_field("model name", path) or platform.processor() or platform.machine() or "unknown"
    )


def linear_shapes(model: torch.nn.Module, limit: int = 4) -> list[Shape]:
    """The ``limit`` most common ``(in_features, out_features)`` of ``model``'s linear layers
    (an output head over the vocabulary, the largest, is left out: scoring restricts it)."""
    counts: dict[Shape, int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            shape = (int(module.in_features), int(module.out_features))
            counts[shape] = counts.get(shape, 0) + 1
    ranked = sorted(counts, key=lambda s: (-counts[s], s))
    vocab = max((s[1] for s in ranked), default=0)
    kept = [s for s in ranked if s[1] != vocab or len(ranked) == 1]
    return kept[:limit]


def matmul_speedup(shapes: Sequence[Shape], rows: int = 256, repeats: int = 7) -> float:
    """fp32 time over bf16 time of ``F.linear`` at ``shapes`` with ``rows`` input rows (module
    docstring); each timing the median of ``repeats`` after one warm-up call."""
    gen = torch.Generator().manual_seed(0)
    totals = {torch.float32: 0.0, torch.bfloat16: 0.0}
    with torch.no_grad():
        for n_in, n_out in shapes:
            x32 = torch.randn(rows, n_in, generator=gen)
            w32 = torch.randn(n_out, n_in, generator=gen)
            for dtype in totals:
                x, w = x32.to(dtype), w32.to(dtype)
                F.linear(x, w)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    F.linear(x, w)
                    times.append(time.perf_counter() - start)
                totals[dtype] += statistics.median(times)
    return totals[torch.float32] / max(totals[torch.bfloat16], 1e-12)


def _key(shapes: Sequence[Shape]) -> str:
    dims = ",".join(f"{a}x{b}" for a, b in shapes)
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {dims}"


def _read(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def choose_bf16(
    device: torch.device,
    shapes: Sequence[Shape],
    cache: Path | None,
    flags: set[str] | None = None,
    probe: Callable[[Sequence[Shape]], float] = matmul_speedup,
    threshold: float = THRESHOLD,
) -> Bf16Choice:
    """bf16 on CUDA; on a CPU without bf16 instructions (``flags``, default ``/proc/cpuinfo``;
    oneDNN's test where the flags cannot be read) fp32 with nothing timed; otherwise bf16 where
    ``probe(shapes)`` (fp32 over bf16 time) is at least ``threshold``, the figure read from or
    written to ``cache`` (a JSON file; None: measured every time)."""
    if device.type == "cuda":
        return Bf16Choice(True, "cuda")
    if device.type != "cpu":
        return Bf16Choice(False, f"no bf16 autocast on {device.type}")
    flags = cpu_flags() if flags is None else flags
    if not native_bf16(device, flags) or not shapes:
        return Bf16Choice(False, "flags")
    key = _key(shapes)
    stored = _read(cache) if cache is not None else {}
    if key in stored:
        return Bf16Choice(stored[key] >= threshold, "cache", stored[key])
    speedup = float(probe(shapes))
    if cache is not None:
        atomic_write_json(cache, {**_read(cache), key: speedup})
    return Bf16Choice(speedup >= threshold, "probe", speedup)


__all__ = [
    "THRESHOLD",
    "Bf16Choice",
    "choose_bf16",
    "cpu_model",
    "linear_shapes",
    "matmul_speedup",
]
