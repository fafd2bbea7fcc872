"""The stage cache: a fully cached rerun and a single-stage rerun against the cold run.

    .venv/bin/python benchmarks/bench_cache.py --mode quick     # smoke profile
    .venv/bin/python benchmarks/bench_cache.py --mode full      # default profile (long)
    .venv/bin/python benchmarks/bench_cache.py --mode tiny      # smoke profile, tiny backbone

Each run is the real command, ``metapt run --profile P --set work_dir=<fresh temp dir>`` (the
prepared assets are shared through ``assets_dir``), timed from process start to exit as a user
sees it, in this order: cold (empty store), cached (nothing changed), ``--refresh cluster``
(the cluster stage recomputed; stages whose inputs are unchanged stay cached), cached again.
Cached runs are reported as the median of the two cached samples. A cold run cannot be
repeated within one store, so these arms cannot interleave; they run back to back.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ASSETS_DIR, REPO, Row, bench_parser, emit, log, median

PROFILES = {"tiny": "smoke", "quick": "smoke", "full": "default"}


def metapt_run(profile: str, work_dir: Path, extra: list[str]) -> float:
    """Wall seconds of one ``metapt run`` (raises with its last output lines on failure)."""
    command = [
        sys.executable, "-m", "flows.cli", "run", "--profile", profile,
        "--set", f"work_dir={work_dir}", "--set", f"assets_dir={ASSETS_DIR}", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise RuntimeError(f"metapt run {' '.join(extra)} failed ({done.returncode}):\n{tail}")
    return seconds


def run(mode: str) -> list[Row]:
    profile = PROFILES[mode]
    with tempfile.TemporaryDirectory() as tmp:
        extra: list[str] = []
        if mode == "tiny":
            from metapt_core.tiny import make_tiny_llama

            extra = ["--set", f"backbone.name_or_path={make_tiny_llama(Path(tmp) / 'tiny-llama')}"]
        work = Path(tmp) / "work"
        cold = metapt_run(profile, work, extra)
        log(f"cache: cold {cold:.1f} s")
        cached = [metapt_run(profile, work, extra)]
        log(f"cache: cached {cached[0]:.1f} s")
        single = metapt_run(profile, work, [*extra, "--refresh", "cluster"])
        log(f"cache: --refresh cluster {single:.1f} s")
        cached.append(metapt_run(profile, work, extra))
    note = f"profile {profile}" + (" with a tiny backbone" if mode == "tiny" else "")
    return [
        Row("6 cache", "fully cached rerun vs cold run", median(cached), cold, "s", "",
            f"{note}; whole command incl. process start"),
        # the target is absolute: seconds, so the ratio is taken against 1 s
        Row("6 cache", "fully cached rerun, wall seconds", median(cached), 1.0, "s", "<=3",
            f"{note}; median of {len(cached)}; decided before torch, Prefect, MLflow load"),
        Row("6 cache", "--refresh cluster rerun vs cold run", single, cold, "s", "",
            "cluster recomputed; downstream reruns only if its output changed"),
    ]  # fmt: skip


def main() -> None:
    args = bench_parser(__doc__).parse_args()
    emit(run(args.mode), args.json, "6. stage cache")


if __name__ == "__main__":
    main()
