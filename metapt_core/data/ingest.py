"""Ingest the pre-training pool and the downstream task splits into Parquet row files.

Every source goes through :func:`~metapt_core.data.sources.load_source` (``datasets``), then
label mapping (:mod:`metapt_core.data.labels`), then cleaning (:mod:`metapt_core.data.cleaning`),
then an optional seeded sample of ``source.max_rows`` rows. Each step's counts go into ``stats``
and the log.

Row files (Parquet, schema ``ROW_SCHEMA``): ``row_id``, ``text``, ``label`` (null when
unlabelled), ``label_id`` (int32, -1 when unlabelled), ``source``. A ``row_id`` is
``<source name>:<sha1(raw text)[:16]>:<occurrence>``, where occurrence counts earlier rows of
the same source with the same raw text: it does not change when other rows are added, removed or
reordered, nor when cleaning settings change.

Splits and samples (all deterministic given the seeds):

- Pool: sources are cleaned in order with one shared duplicate set (a text kept from an earlier
  source drops later copies), then ``pool.max_rows`` rows are sampled with ``pool.seed``.
- Task without a ``test`` source: per class, ``round(n_c * test_fraction)`` rows (at most
  ``n_c - 1``, so every class keeps a train row) go to test, drawn with ``task.seed``.
- Task with a ``test`` source: test texts that duplicate a train text are dropped (counted as
  ``duplicate`` in the test stats) when ``cleaning.drop_duplicates``.
- ``max_test``: a stratified sample of the test split (per-class quotas proportional to the
  class counts, rounded by largest remainder), drawn with ``task.seed``.

Checks that fail loudly and write nothing: a task class with no train row
(``tasks[<t>].train``), and any test text of any task whose :func:`normalize_text` also occurs
in the pool (``tasks[<t>].test``): evaluation data must never be pre-trained on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metapt_core.config import CleaningConfig, SourceConfig, TargetTaskConfig
from metapt_core.data.cleaning import clean_texts, normalize_text
from metapt_core.data.labels import map_labels
from metapt_core.data.sources import load_source
from metapt_core.errors import DataError
from metapt_core.specs import PoolSpec, TasksSpec
from metapt_core.store import ArtifactRef, atomic_path, atomic_write_json

if TYPE_CHECKING:
    from metapt_core.assets import AssetPaths

log = logging.getLogger(__name__)

POOL_FILE = "pool.parquet"
TASKS_FILE = "tasks.json"
ROW_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("label", pa.string()),
        pa.field("label_id", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stage wrote (file or folder, with its fingerprint) and its counts."""

    ref: ArtifactRef
    stats: dict[str, Any]


@dataclass
class Rows:
    """Columns of a row file, kept as parallel lists."""

    row_id: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    label: list[str | None] = field(default_factory=list)
    label_id: list[int] = field(default_factory=list)
    source: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.row_id)

    def take(self, positions: Sequence[int]) -> Rows:
        """The rows at ``positions``, in that order."""
        return Rows(
            [self.row_id[i] for i in positions],
            [self.text[i] for i in positions],
            [self.label[i] for i in positions],
            [self.label_id[i] for i in positions],
            [self.source[i] for i in positions],
        )

    def extend(self, other: Rows) -> None:
        for name in ("row_id", "text", "label", "label_id", "source"):
            getattr(self, name).extend(getattr(other, name))

    def label_counts(self, classes: Sequence[str] | None = None) -> dict[str, int]:
        """Rows per class (every class listed, in order, when ``classes`` is given)."""
        counts = Counter(lab for lab in self.label if lab is not None)
        if classes is None:
            return dict(sorted(counts.items()))
        return {name: counts.get(name, 0) for name in classes}

    def to_table(self, classes: Sequence[str] | None = None) -> pa.Table:
        table = pa.table(
            {
                "row_id": self.row_id,
                "text": self.text,
                "label": self.label,
                "label_id": pa.array(self.label_id, pa.int32()),
                "source": self.source,
            },
            schema=ROW_SCHEMA,
        )
        if classes is not None:
            table = table.replace_schema_metadata({"metapt.classes": json.dumps(list(classes))})
        return table


def row_ids(source_name: str, texts: Sequence[Any]) -> list[str]:
    """Stable ids ``<source>:<sha1(text)[:16]>:<occurrence>`` for a source's raw texts."""
    seen: Counter[str] = Counter()
    ids = []
    for text in texts:
        digest = hashlib.sha1(("" if text is None else str(text)).encode("utf-8")).hexdigest()[:16]
        ids.append(f"{source_name}:{digest}:{seen[digest]}")
        seen[digest] += 1
    return ids


def _sample(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``n`` positions drawn without replacement, kept in their original order."""
    if k <= 0 or k >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())


def load_rows(
    src: SourceConfig,
    assets: AssetPaths | None,
    classes: Sequence[str],
    cleaning: CleaningConfig,
    seed: int,
    where: str,
    seen: set[str] | None = None,
) -> tuple[Rows, dict[str, Any]]:
    """Load, label, clean and sample one source.

    Args:
        src: the source.
        assets: prepared assets (for builtin sets).
        classes: class names, in label-id order.
        cleaning: the cleaning rules.
        seed: seed of the ``src.max_rows`` sample.
        where: the setting named in errors (``pool.sources[0]``, ``tasks[mr].train``).
        seen: normalised texts kept earlier (shared duplicate set); updated.

    Returns:
        The rows, and stats: ``loaded``, ``unmapped`` (+ ``unmapped_keys``), one count per
        cleaning rule, ``sampled_out``, ``rows``, ``label_counts``.
    """
    ds = load_source(src, assets)
    texts = ds[src.text_column][:]  # materialise: datasets 5 columns are lazy per item
    ids = row_ids(src.name, texts)
    stats: dict[str, Any] = {"loaded": len(ds)}
    if src.label_column:
        mapped = map_labels(ds[src.label_column][:], src, classes, where)
        keep, labels, label_ids = mapped.keep, mapped.labels, mapped.label_ids
        stats["unmapped"] = mapped.dropped
        stats["unmapped_keys"] = mapped.dropped_keys
    else:
        keep, labels, label_ids = list(range(len(ds))), [None] * len(ds), [-1] * len(ds)
        stats["unmapped"] = 0
    cleaned = clean_texts([texts[i] for i in keep], cleaning, seen)
    stats.update(cleaned.counts)
    rows = Rows(
        [ids[keep[j]] for j in cleaned.keep],
        cleaned.texts,
        [labels[j] for j in cleaned.keep],
        [label_ids[j] for j in cleaned.keep],
        [src.name] * len(cleaned.keep),
    )
    chosen = _sample(len(rows), src.max_rows, seed)
    stats["sampled_out"] = len(rows) - len(chosen)
    rows = rows.take(chosen)
    stats["rows"] = len(rows)
    stats["label_counts"] = rows.label_counts(classes if src.label_column else None)
    log.info("%s (%s): %s", where, src.name, _summary(stats))
    return rows, stats


def _summary(stats: dict[str, Any]) -> str:
    shown = (
        "loaded",
        "unmapped",
        "fixed_encoding",
        "stripped",
        "empty",
        "too_short",
        "too_long",
        "duplicate",
        "sampled_out",
        "rows",
    )
    return (
        ", ".join(f"{k}={stats[k]}" for k in shown if k in stats)
        + f", labels={stats.get('label_counts')}"
    )


def _write_parquet(rows: Rows, target: Path, classes: Sequence[str] | None) -> None:
    with atomic_path(target) as tmp:
        pq.write_table(rows.to_table(classes), tmp)


def build_pool(cfg: PoolSpec, assets: AssetPaths | None) -> tuple[Rows, dict[str, Any]]:
    """The cleaned, sampled pool rows and their stats, in memory."""
    pool = cfg.pool
    seen: set[str] = set()
    rows = Rows()
    per_source: dict[str, Any] = {}
    for i, src in enumerate(pool.sources):
        got, stats = load_rows(
            src, assets, pool.classes, cfg.cleaning, pool.seed, f"pool.sources[{i}]", seen
        )
        rows.extend(got)
        per_source[src.name] = stats
    if len(rows) == 0:
        raise DataError(
            "pool.sources", [s.name for s in pool.sources], "no rows left after cleaning"
        )
    chosen = _sample(len(rows), pool.max_rows, pool.seed)
    sampled_out = len(rows) - len(chosen)
    rows = rows.take(chosen)
    stats = {
        "sources": per_source,
        "sampled_out": sampled_out,
        "rows": len(rows),
        "label_counts": rows.label_counts(pool.classes),
        "unlabelled": sum(1 for lab in rows.label if lab is None),
    }
    return rows, stats


def ingest_pool(
    cfg: PoolSpec,
    assets: AssetPaths | None,
    out_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
) -> IngestResult:
    """Write the pre-training pool to ``out_dir/pool.parquet``.

    ``cfg`` is what ingestion reads (:class:`~metapt_core.specs.PoolSpec`: ``pool``,
    ``cleaning``).

    Returns:
        ``ref`` to ``pool.parquet`` (its sha256) and ``stats`` (per-source counts, rows, labels).
    """
    start = time.perf_counter()
    if progress is not None:
        progress(0, 2, f"reading {len(cfg.pool.sources)} source(s)")
    rows, stats = build_pool(cfg, assets)
    target = Path(out_dir) / POOL_FILE
    _write_parquet(rows, target, cfg.pool.classes)
    if progress is not None:
        progress(2, 2, f"{len(rows)} rows")
    stats["seconds"] = round(time.perf_counter() - start, 3)
    log.info("pool: %d rows, labels %s -> %s", len(rows), stats["label_counts"], target)
    return IngestResult(ArtifactRef.of(target), stats)


def stratified_split(
    labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Per class, ``round(n_c * fraction)`` positions (at most ``n_c - 1``) go to test.

    Returns:
        (train positions, test positions), each in ascending order.
    """
    rng = np.random.default_rng(seed)
    test: list[int] = []
    for label in sorted(set(labels)):
        members = [i for i, lab in enumerate(labels) if lab == label]
        n_test = min(round(len(members) * fraction), len(members) - 1)
        test.extend(rng.permutation(members)[:n_test].tolist())
    test_set = set(test)
    return [i for i in range(len(labels)) if i not in test_set], sorted(test)


def stratified_sample(labels: Sequence[int], k: int, seed: int) -> list[int]:
    """``k`` positions with per-class quotas ``k * n_c / n`` rounded by largest remainder."""
    n = len(labels)
    if k <= 0 or k >= n:
        return list(range(n))
    classes = sorted(set(labels))
    members = {c: [i for i, lab in enumerate(labels) if lab == c] for c in classes}
    exact = {c: k * len(members[c]) / n for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    # Ties in the remainder go to the earlier class so the result is fully determined.
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[: k - sum(quota.values())]:
        quota[c] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c in classes:
        chosen.extend(rng.permutation(members[c])[: quota[c]].tolist())
    return sorted(chosen)


def task_rows(
    task: TargetTaskConfig, cfg: TasksSpec, assets: AssetPaths | None
) -> tuple[Rows, Rows, dict[str, Any]]:
    """Train and test rows of one task and their stats."""
    assert task.train is not None
    for split, src in (("train", task.train), ("test", task.test)):
        if src is not None and not src.label_column:
            raise DataError(
                f"tasks[{task.name}].{split}.label_column", "", "a downstream task needs labels"
            )
    seen: set[str] = set()
    train, train_stats = load_rows(
        task.train, assets, task.classes, cfg.cleaning, task.seed, f"tasks[{task.name}].train", seen
    )
    stats: dict[str, Any] = {"train_source": train_stats}
    if task.test is not None:
        test, test_stats = load_rows(
            task.test,
            assets,
            task.classes,
            cfg.cleaning,
            task.seed,
            f"tasks[{task.name}].test",
            seen,
        )
        stats["test_source"] = test_stats
    else:
        train_pos, test_pos = stratified_split(train.label_id, task.test_fraction, task.seed)
        train, test = train.take(train_pos), train.take(test_pos)
    chosen = stratified_sample(test.label_id, task.max_test, task.seed)
    stats["test_sampled_out"] = len(test) - len(chosen)
    test = test.take(chosen)
    counts = train.label_counts(task.classes)
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise DataError(
            f"tasks[{task.name}].train", counts, f"classes {empty} have no training rows"
        )
    if len(test) == 0:
        raise DataError(f"tasks[{task.name}].test", 0, "the test split is empty")
    stats["counts"] = {"train": counts, "test": test.label_counts(task.classes)}
    stats["rows"] = {"train": len(train), "test": len(test)}
    return train, test, stats


def check_leakage(tests: dict[str, Rows], pool_texts: Sequence[str]) -> None:
    """Raise if any test text (normalised) of any task also occurs in the pool."""
    pool_keys = {normalize_text(t) for t in pool_texts}
    for name, rows in tests.items():
        overlap = [t for t in rows.text if normalize_text(t) in pool_keys]
        if overlap:
            raise DataError(
                f"tasks[{name}].test",
                len(overlap),
                f"test texts also in the pre-training pool (first: {overlap[0][:60]!r}); "
                "remove them from the pool sources or use another test split",
            )


def ingest_tasks(
    cfg: TasksSpec,
    assets: AssetPaths | None,
    pool_ref: ArtifactRef | None,
    out_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
) -> IngestResult:
    """Write ``out_dir/<task>/{train,test}.parquet`` and ``out_dir/tasks.json`` for every task.

    Args:
        cfg: what task ingestion reads (:class:`~metapt_core.specs.TasksSpec`: ``tasks``,
            ``cleaning``).
        assets: prepared assets (for builtin sets).
        pool_ref: the pool written by :func:`ingest_pool`, for the leakage check (None skips it,
            with a warning).
        out_dir: the folder to write; replaced as a whole, atomically.

    Returns:
        ``ref`` to ``out_dir`` (folder fingerprint) and ``stats`` per task.

    Raises:
        DataError: bad sources, a class without train rows, or test texts found in the pool
            (nothing is written then).
    """
    start = time.perf_counter()
    built: dict[str, tuple[Rows, Rows, dict[str, Any]]] = {}
    for i, task in enumerate(cfg.tasks):
        built[task.name] = task_rows(task, cfg, assets)
        if progress is not None:
            progress(i + 1, len(cfg.tasks) + 1, f"task {task.name}")
    if pool_ref is None:
        log.warning("tasks: no pool given, test-in-pool leakage check skipped")
    else:
        pool_texts = (
            pq.read_table(pool_ref.verify().path, columns=["text"]).column("text").to_pylist()
        )
        check_leakage({name: parts[1] for name, parts in built.items()}, pool_texts)
    summary: dict[str, Any] = {}
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for task in cfg.tasks:
            train, test, stats = built[task.name]
            (tmp / task.name).mkdir()
            _write_parquet(train, tmp / task.name / "train.parquet", task.classes)
            _write_parquet(test, tmp / task.name / "test.parquet", task.classes)
            summary[task.name] = {
                "classes": list(task.classes),
                "verbalizer": list(task.verbalizer),
                "template": task.template,
                "counts": stats["counts"],
                "rows": stats["rows"],
            }
            log.info(
                "task %s: train %s, test %s",
                task.name,
                stats["counts"]["train"],
                stats["counts"]["test"],
            )
        atomic_write_json(tmp / TASKS_FILE, summary)
    all_stats: dict[str, Any] = {name: parts[2] for name, parts in built.items()}
    all_stats["seconds"] = round(time.perf_counter() - start, 3)
    return IngestResult(ArtifactRef.of(out), all_stats)


def read_rows(path: str | Path) -> pa.Table:
    """Read a row file written by this module (checks the columns)."""
    table = pq.read_table(path)
    missing = [n for n in ROW_SCHEMA.names if n not in table.column_names]
    if missing:
        raise DataError("rows", str(path), f"missing columns {missing}")
    return table


def classes_of(table: pa.Table) -> list[str] | None:
    """The class list stored in a row file's metadata, if any."""
    meta = table.schema.metadata or {}
    raw = meta.get(b"metapt.classes")
    return json.loads(raw) if raw else None
