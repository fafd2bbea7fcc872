"""The benchmark suite's plumbing: its CLI starts and its table has the promised columns.

No timings are asserted here; the figures themselves come from ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common  # noqa: E402
import run_all  # noqa: E402


def test_run_all_help_lists_modes() -> None:
    out = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    for flag in ("--quick", "--dry-run", "--only", "--out"):
        assert flag in out.stdout


def test_every_benchmark_script_exists() -> None:
    for script in run_all.BENCHMARKS.values():
        assert (BENCH / script).is_file(), script


def test_row_ratio_and_target() -> None:
    row = _common.Row("b", "m", 3.0, 2.0, "s", ">=1.3")
    assert row.ratio == pytest.approx(1.5)
    assert row.passed is True
    assert _common.Row("b", "m", 1.0, 1.0, target=">=1.3").passed is False
    assert _common.Row("b", "m", 4.0, 1.0, target="<=3.5").passed is False
    assert _common.Row("b", "m", None, None, note="skipped").ratio is None
    with pytest.raises(ValueError):
        _common.meets(1.0, "about 2")


def test_markdown_table_columns_and_round_trip(tmp_path: Path) -> None:
    rows = [_common.Row("1 prompt tuning", "train a|b", 13.0, 10.0, "examples/s", ">=1.3", "B8")]
    table = _common.markdown_table(rows).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == list(_common.COLUMNS)
    cells = [c.strip() for c in table[2].strip("|").split("|")]
    assert len(cells) == len(_common.COLUMNS)
    assert cells[header.index("ratio")] == "1.3x"
    assert cells[header.index("pass")] == "yes"
    assert cells[header.index("metric")] == "train a/b"  # a pipe would break the table
    path = tmp_path / "rows.json"
    _common.emit(rows, str(path), "t")
    again = [_common.Row.from_dict(d) for d in json.loads(path.read_text())]
    assert again == rows


def test_readme_markers_are_replaced() -> None:
    text = "a\n<!-- latest-results:start -->\nold\n<!-- latest-results:end -->\nz\n"
    new = run_all.replace_between(text, "latest-results", "| new |")
    assert new == "a\n<!-- latest-results:start -->\n| new |\n<!-- latest-results:end -->\nz\n"
    assert run_all.replace_between("no markers", "latest-results", "x") is None
    for page in (BENCH / "README.md", run_all.DOCS_PAGE):  # the pages run_all updates
        body = page.read_text()
        assert run_all.replace_between(body, "latest-results", "x") is not None, page
        assert run_all.replace_between(body, "gpu-results", "x") is not None, page


def test_only_replaces_its_benchmarks_rows_in_the_saved_table(tmp_path: Path) -> None:
    old = [
        _common.Row("1 a", "x", 2.0, 1.0),
        _common.Row("6 cache", "old cached", 9.0, 10.0),
        _common.Row("6 cache", "old refresh", 5.0, 10.0),
        _common.Row("8 b", "y", 1.0, 1.0),
    ]
    saved = tmp_path / "latest.json"
    saved.write_text(json.dumps({"mode": "quick", "started": "T0", "seconds": {"a": 3.0},
                                 "rows": [r.to_dict() for r in old]}))  # fmt: skip
    new = [_common.Row("6 cache", "cached", 2.0, 60.0)]
    rows, header = run_all.merge_previous(saved, "quick", new, "Run T1.", "T1")
    assert [r.metric for r in rows] == ["x", "cached", "y"]
    assert "T0" in header and "T1" in header and "6 cache" in header
    # another mode's table is not merged
    assert run_all.merge_previous(saved, "full", new, "Run T1.", "T1") == (new, "Run T1.")


@pytest.mark.parametrize("name", ["meta_step", "precision", "eval_attention"])
def test_model_benchmarks_finish_in_tiny_mode(name: str, tmp_path: Path) -> None:
    """The scripts read the default profile (``meta.inner_lr: auto``) and must still run."""
    out = tmp_path / f"{name}.json"
    done = subprocess.run(
        run_all.script_command(name, "tiny", out), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert rows, f"{name}: no rows"
