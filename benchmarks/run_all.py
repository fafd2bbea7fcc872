"""Run every benchmark, print one table of ratios against in-process baselines, and save it.

    .venv/bin/python benchmarks/run_all.py                 # full sizes (make bench)
    .venv/bin/python benchmarks/run_all.py --quick         # small sizes, < 10 min on 2 idle cores
    .venv/bin/python benchmarks/run_all.py --dry-run       # tiny models: checks every script runs
    .venv/bin/python benchmarks/run_all.py --quick --only prompt_tuning,flops

Each benchmark runs in its own process (a crash or a memory peak stays there); its rows come
back as JSON. The table goes to ``--out`` (Markdown, default ``benchmarks/results/latest.md``)
and next to it as JSON, with the machine it ran on, and into ``benchmarks/README.md`` and
``docs/benchmarks.md`` between their ``latest-results`` markers (and the GPU table from
``results/gpu.md`` between their ``gpu-results`` markers). The exit status is 1 if a benchmark
script failed, else 0: a missed target is reported in the table, not as a failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from _common import REPO, Row, atomic_write, machine, machine_line, markdown_table

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "prompt_tuning": "bench_prompt_tuning.py",
    "meta_step": "bench_meta_step.py",
    "flops": "bench_flops.py",
    "embed_cluster": "bench_embed_cluster.py",
    "grid": "bench_grid_batching.py",
    "cache": "bench_cache.py",
    "precision": "bench_precision.py",
    "eval_attention": "bench_eval_attention.py",
    "deployment": "bench_deployment.py",
    "gpu": "bench_gpu.py",
}
README = HERE / "README.md"
DOCS_PAGE = REPO / "docs" / "benchmarks.md"
MARKERS = {"latest": "latest-results", "gpu": "gpu-results"}


def script_command(name: str, mode: str, json_path: Path) -> list[str]:
    script = str(HERE / BENCHMARKS[name])
    if name == "gpu":
        return [
            sys.executable,
            script,
            "--json",
            str(json_path),
            *(["--dry-run"] if mode == "tiny" else []),
        ]
    return [sys.executable, script, "--mode", mode, "--json", str(json_path)]


def run_one(name: str, mode: str, timeout: float) -> tuple[list[Row], float]:
    """Run one benchmark script, echoing its output; its rows (or one row saying it failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "rows.json"
        start = time.perf_counter()
        tail: deque[str] = deque(maxlen=8)
        proc = subprocess.Popen(
            script_command(name, mode, json_path), cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        assert proc.stdout is not None
        deadline = start + timeout
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip())
            if time.perf_counter() > deadline:
                proc.kill()
                break
        code = proc.wait()
        seconds = time.perf_counter() - start
        if code == 0 and json_path.is_file():
            return [Row.from_dict(d) for d in json.loads(json_path.read_text())], seconds
    why = "timed out" if seconds > timeout else f"exit status {code}"
    last = next((t for t in reversed(tail) if t.strip()), "")
    return [Row(name, "FAILED", None, None, note=f"{why}: {last[:160]}")], seconds


def replace_between(text: str, marker: str, body: str) -> str | None:
    """``text`` with the part between ``<!-- marker:start -->`` and ``:end -->`` replaced."""
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    if start not in text or end not in text:
        return None
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body.rstrip()}\n{end}{tail}"


def update_readmes(latest_md: str) -> list[Path]:
    """Put the latest table (and the last GPU table) into the READMEs that carry the markers."""
    gpu_file = HERE / "results" / "gpu.md"
    gpu_md = (
        gpu_file.read_text()
        if gpu_file.is_file()
        else "No GPU run recorded yet (`benchmarks/bench_gpu.py` on a CUDA machine)."
    )
    updated = []
    for readme in (README, DOCS_PAGE):
        if not readme.is_file():
            continue
        text = readme.read_text()
        new = text
        for key, body in (("latest", latest_md), ("gpu", gpu_md)):
            replaced = replace_between(new, MARKERS[key], body)
            new = replaced if replaced is not None else new
        if new != text:
            atomic_write(readme, new)
            updated.append(readme)
    return updated


def merge_previous(
    saved: Path, mode: str, rows: list[Row], header: str, started: str
) -> tuple[list[Row], str]:
    """The saved run's rows with the benchmarks just run replaced by their new rows.

    A row's benchmark is its label (``"6 cache"``); every row of a label that this run produced
    is replaced, in place. The header names both runs. Without a saved run of the same mode the
    new rows stand alone.
    """
    if not saved.is_file():
        return rows, header
    previous = json.loads(saved.read_text())
    if previous.get("mode") != mode:
        return rows, header
    fresh = {row.benchmark for row in rows}
    merged: list[Row] = []
    placed: set[str] = set()
    for old in (Row.from_dict(d) for d in previous.get("rows", [])):
        if old.benchmark not in fresh:
            merged.append(old)
        elif old.benchmark not in placed:
            merged.extend(r for r in rows if r.benchmark == old.benchmark)
            placed.add(old.benchmark)
    merged.extend(r for r in rows if r.benchmark not in placed)
    took = ", ".join(f"{n} {s:.0f} s" for n, s in previous.get("seconds", {}).items())
    first = str(
        previous.get("header") or f"Run {previous.get('started', '?')}, `{mode}` mode ({took})."
    )
    replaced = ", ".join(sorted(fresh))
    return merged, f"{first.rstrip('.')}; rows of {replaced} from the run of {started}: {header}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else "",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join((__doc__ or "").splitlines()[1:]),
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (within 10 min on 2 idle cores)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny models: check that every script runs"
    )
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--out",
        default="",
        help="Markdown table file, JSON next to it (default: benchmarks/results/latest.md; "
        "a dry run: the temporary directory)",
    )
    parser.add_argument(
        "--timeout", type=float, default=0, help="seconds per benchmark (0: 15 min quick, 3 h full)"
    )
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="do not update the tables in benchmarks/README.md and docs/benchmarks.md",
    )
    args = parser.parse_args()
    mode = "tiny" if args.dry_run else "quick" if args.quick else "full"
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(BENCHMARKS)})")
    timeout = args.timeout or (900.0 if mode != "full" else 3 * 3600.0)
    info = machine()
    started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# benchmarks ({mode} mode) on {machine_line(info)}", flush=True)
    rows: list[Row] = []
    seconds: dict[str, float] = {}
    total = time.perf_counter()
    for name in names:
        print(f"\n=== {name} ({BENCHMARKS[name]}) ===", flush=True)
        got, seconds[name] = run_one(name, mode, timeout)
        rows.extend(got)
    total_s = time.perf_counter() - total
    default_dir = Path(tempfile.gettempdir()) if mode == "tiny" else HERE / "results"
    out = (
        Path(args.out)
        if args.out
        else default_dir / ("bench-dry-run.md" if mode == "tiny" else "latest.md")
    )
    durations = ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items())
    header = f"Run {started}, `{mode}` mode, {total_s / 60:.1f} min ({durations})."
    if args.only:
        # --only replaces those benchmarks' rows in the saved table and keeps the others
        rows, header = merge_previous(out.with_suffix(".json"), mode, rows, header, started)
    table = markdown_table(rows)
    body = (
        f"{header}\n"
        f"Machine: {machine_line(info)}.\n\n"
        "Ratio = candidate / baseline, both measured in the same invocation (interleaved, medians).\n\n"
        + table
    )
    print("\n# results\n\n" + body)
    atomic_write(out, f"# Benchmark results\n\n{body}")
    payload = {"mode": mode, "started": started, "seconds": seconds, "machine": info,
               "header": header, "rows": [r.to_dict() for r in rows]}  # fmt: skip
    atomic_write(out.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    if not args.no_readme and mode != "tiny":
        for readme in update_readmes(body):
            print(f"updated {readme.relative_to(REPO) if readme.is_relative_to(REPO) else readme}")
    failed = [r for r in rows if r.metric == "FAILED"]
    return 1 if failed else 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
