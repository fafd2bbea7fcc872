"""Shared helpers of the benchmark scripts: result rows, interleaved timing, peak memory, tables.

Every figure is a ratio against a baseline measured in the same process (or the same
invocation), with the two arms interleaved (A B A B ...) and medians reported, so a busy
machine slows both arms alike instead of skewing one of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The project's environment defaults (offline, no telemetry, OpenMP threads that do not spin),
# read when torch loads, so they hold in the processes run_all.py starts too.
import flows.env  # noqa: F401

# Quiet: no progress bars in the tables' output.
for _key, _value in {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}.items():
    os.environ.setdefault(_key, _value)

MODES = ("tiny", "quick", "full")
COLUMNS = (
    "benchmark",
    "metric",
    "candidate",
    "baseline",
    "unit",
    "ratio",
    "target",
    "pass",
    "note",
)
REPO = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO / ".metapt" / "assets"


@dataclass
class Row:
    """One figure: a candidate against its baseline, their ratio and the target it must meet.

    ``target`` is ``">=1.3"`` or ``"<=3.5"`` (on the ratio) or empty; ``passed`` is derived.
    """

    benchmark: str
    metric: str
    candidate: float | None
    baseline: float | None
    unit: str = ""
    target: str = ""
    note: str = ""
    ratio: float | None = field(default=None)
    passed: bool | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.candidate is not None and self.baseline:
            self.ratio = self.candidate / self.baseline
        if self.passed is None and self.target and self.ratio is not None:
            self.passed = meets(self.ratio, self.target)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Row:
        fields: dict[str, Any] = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**fields)


TIMING_ALPHA = 0.1  # inner rate where the profile says ``auto`` (the cost does not depend on it)


def inner_alpha(inner_lr: float | str) -> float:
    """The profile's ``meta.inner_lr`` as a number: ``auto`` (chosen per run from the curvature)
    becomes :data:`TIMING_ALPHA`, a rate in the range the curvature rule picks on SmolLM2."""
    return float(inner_lr) if not isinstance(inner_lr, str) else TIMING_ALPHA


def meets(ratio: float, target: str) -> bool:
    """Whether ``ratio`` satisfies ``target`` (``">=X"`` or ``"<=X"``)."""
    match = re.fullmatch(r"\s*(>=|<=)\s*([0-9.eE+-]+)\s*", target)
    if not match:
        raise ValueError(f"target {target!r} is not '>=X' or '<=X'")
    bound = float(match.group(2))
    return ratio >= bound if match.group(1) == ">=" else ratio <= bound


# -------------------------------------------------------------------------------- timing


def interleaved(
    arms: dict[str, Callable[[], object]], reps: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each arm over ``reps`` rounds, arms alternating within every round.

    Args:
        arms: name -> zero-argument callable doing one unit of work.
        reps: timed rounds (each round runs every arm once, in order).
        warmup: untimed rounds first (one-time allocations, lazy initialisation).

    Returns:
        name -> ``reps`` durations in seconds.
    """
    for _ in range(warmup):
        for fn in arms.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(reps):
        for name, fn in arms.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# -------------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    found = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def rss_bytes() -> int:
    """Current resident set size of this process (Linux)."""
    return _status_kib("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_bytes() -> int:
    """Peak resident set size since the last :func:`reset_peak_rss` (or process start)."""
    hwm = _status_kib("VmHWM")
    if hwm:
        return hwm * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@contextmanager
def peak_rss_delta() -> Iterator[dict[str, int]]:
    """Measure ``peak RSS during the block - RSS before it`` (bytes) into ``out["delta"]``."""
    import gc

    gc.collect()
    out = {"base": rss_bytes(), "delta": 0}
    reset_peak_rss()
    yield out
    out["delta"] = max(0, peak_rss_bytes() - out["base"])


# -------------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, torch build and threads, GPU."""
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        info["cpu"] = found.group(1).strip() if found else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    info["cores"] = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    )
    with suppress(OSError):
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def machine_line(info: dict[str, Any]) -> str:
    parts = [f"{info.get('cpu', '?')}, {info.get('cores', '?')} cores"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']}")
    parts.append(f"torch {info.get('torch', '?')} ({info.get('torch_threads', '?')} threads)")
    if "load_avg_1m" in info:
        parts.append(f"load average {info['load_avg_1m']} at start")
    return "; ".join(parts)


# -------------------------------------------------------------------------------- tables


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1e5 or abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value).replace("|", "/")


def markdown_table(rows: Sequence[Row]) -> str:
    """A Markdown table with the columns of :data:`COLUMNS`."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [
            row.benchmark,
            row.metric,
            _fmt(row.candidate),
            _fmt(row.baseline),
            row.unit,
            "" if row.ratio is None else f"{row.ratio:.3g}x",
            row.target,
            _fmt(row.passed),
            row.note,
        ]
        lines.append(
            "| "
            + " | ".join(_fmt(c) if not isinstance(c, str) else c.replace("|", "/") for c in cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (no partial file)."""
    from metapt_core.store import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# -------------------------------------------------------------------------------- CLI


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The arguments every benchmark script takes: ``--mode`` and ``--json``."""
    parser = argparse.ArgumentParser(
        description=(doc or "").splitlines()[0] if doc else "",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((doc or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default="quick",
        help="tiny: a dry run on a tiny model; quick: small sizes; full: the sizes of the issue",
    )
    parser.add_argument("--json", default="", help="also write the rows as JSON to this file")
    return parser


def emit(rows: Sequence[Row], json_path: str, title: str) -> None:
    """Print the rows as a table and, when asked, write them as JSON."""
    print(f"\n## {title}\n")
    print(markdown_table(rows))
    if json_path:
        atomic_write(Path(json_path), json.dumps([r.to_dict() for r in rows], indent=2) + "\n")


def log(message: str) -> None:
    print(message, flush=True)


# -------------------------------------------------------------------------------- models, data

SMOLLM2 = "builtin:smollm2-135m"
VADER_MOVIE = "movieReviewSnippets_GroundTruth.txt"


def movie_snippets(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """``n`` real movie-review snippets (VADER asset) and their sign labels (0 neg, 1 pos).

    Falls back to the tiny built-in corpus when the assets are not prepared (tiny mode).
    """
    import random

    from metapt_core.assets import AssetPaths

    path = AssetPaths.under(ASSETS_DIR).vader / VADER_MOVIE
    rows: list[tuple[str, int]] = []
    if path.is_file():
        for line in path.read_text("utf-8").splitlines():
            parts = line.split("\t", 2)
            if len(parts) == 3 and float(parts[1]) != 0.0:
                rows.append((parts[2], int(float(parts[1]) > 0)))
    else:
        from metapt_core.tiny import CORPUS

        rows = [(text, i % 2) for i, text in enumerate(CORPUS)]
    random.Random(seed).shuffle(rows)
    rows = (rows * (n // max(len(rows), 1) + 1))[:n]
    return [t for t, _ in rows], [y for _, y in rows]


def backbone_name(mode: str, tmp: Path) -> str:
    """The backbone of a mode: a tiny random Llama for ``tiny``, else the embedded SmolLM2."""
    if mode == "tiny":
        from metapt_core.tiny import make_tiny_llama

        return str(make_tiny_llama(tmp / "tiny-llama", hidden=64, layers=2))
    return SMOLLM2


def load_prompt_model(mode: str, tmp: Path, scoring: Any = None) -> Any:
    """A :class:`metapt_core.lm.PromptModel` on the mode's backbone (a fresh, uncached load)."""
    from metapt_core.backbone import clear_cache, load_backbone
    from metapt_core.config import BackboneConfig
    from metapt_core.lm import PromptModel

    clear_cache()
    backbone = load_backbone(
        BackboneConfig(name_or_path=backbone_name(mode, tmp)), assets_dir=ASSETS_DIR
    )
    return PromptModel(backbone, scoring)


def default_config() -> Any:
    """The default profile's resolved configuration."""
    from metapt_core.config import load_config

    return load_config("default")


def short_name(name: str) -> str:
    """A backbone's name for a table: the last path part, without ``builtin:``."""
    return name.rstrip("/").split("/")[-1].removeprefix("builtin:")
