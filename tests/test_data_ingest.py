"""Ingestion on small files made in tmp_path: formats, labels, cleaning, ids, splits, leakage."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
import pytest

from metapt_core.config import (
    CleaningConfig,
    PipelineConfig,
    PoolConfig,
    SourceConfig,
    SourceFormat,
    TargetTaskConfig,
)
from metapt_core.data import (
    bin_index,
    clean_texts,
    fix_encoding,
    ingest_pool,
    ingest_tasks,
    load_rows,
    load_source,
    map_labels,
    normalize_text,
    row_ids,
    stratified_sample,
    stratified_split,
)
from metapt_core.errors import DataError
from metapt_core.specs import PoolSpec, TasksSpec

ROWS = [
    {"sentence": "a truly great film", "y": "pos", "score": 3.1},
    {"sentence": "dull and far too long", "y": "neg", "score": -2.0},
    {"sentence": "an average outing", "y": "pos", "score": 0.0},
    {"sentence": "loved every minute", "y": "pos", "score": 2.5},
    {"sentence": "a waste of time", "y": "neg", "score": -3.5},
]


def _src(path: Path, fmt: SourceFormat, **kw) -> SourceConfig:
    base = dict(
        name="s",
        format=fmt,
        path=str(path),
        text_column="sentence",
        label_column="y",
        label_map={"pos": "positive", "neg": "negative"},
    )
    base.update(kw)
    return SourceConfig(**base)


def _write(tmp_path: Path, fmt: SourceFormat, rows=ROWS) -> Path:
    frame = pd.DataFrame(rows)
    if fmt is SourceFormat.CSV:
        path = tmp_path / "d.csv"
        frame.to_csv(path, index=False)
    elif fmt is SourceFormat.JSON:
        path = tmp_path / "d.jsonl"
        frame.to_json(path, orient="records", lines=True)
    elif fmt is SourceFormat.PARQUET:
        path = tmp_path / "d.parquet"
        frame.to_parquet(path)
    else:
        path = tmp_path / "saved"
        datasets.Dataset.from_pandas(frame).save_to_disk(str(path))
    return path


FORMATS = [SourceFormat.CSV, SourceFormat.JSON, SourceFormat.PARQUET, SourceFormat.DISK]


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_loads_through_datasets(tmp_path: Path, fmt: SourceFormat) -> None:
    ds = load_source(_src(_write(tmp_path, fmt), fmt))
    assert isinstance(ds, datasets.Dataset)
    assert ds["sentence"] == [r["sentence"] for r in ROWS]
    assert ds["y"] == [r["y"] for r in ROWS]


def test_disk_datasetdict_split(tmp_path: Path) -> None:
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(pd.DataFrame(ROWS[:2])),
            "validation": datasets.Dataset.from_pandas(pd.DataFrame(ROWS[2:])),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    ds = load_source(_src(tmp_path / "dd", SourceFormat.DISK, split="validation"))
    assert len(ds) == 3
    with pytest.raises(DataError, match=r"source\[s\]\.split='test'"):
        load_source(_src(tmp_path / "dd", SourceFormat.DISK, split="test"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"source\[s\]\.path=.*file not found"):
        load_source(_src(tmp_path / "nope.csv", SourceFormat.CSV))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(DataError, match="file is empty"):
        load_source(_src(tmp_path / "e.csv", SourceFormat.CSV))
    (tmp_path / "h.csv").write_text("sentence,y\n")
    with pytest.raises(DataError, match="has no rows"):
        load_source(_src(tmp_path / "h.csv", SourceFormat.CSV))


def test_missing_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, SourceFormat.CSV)
    with pytest.raises(DataError, match=r"source\[s\]\.text_column='text': not in columns"):
        load_source(_src(path, SourceFormat.CSV, text_column="text"))
    with pytest.raises(DataError, match=r"source\[s\]\.label_column='label'"):
        load_source(_src(path, SourceFormat.CSV, label_column="label"))


def test_non_utf8_and_malformed_csv(tmp_path: Path) -> None:
    bad = tmp_path / "latin.csv"
    bad.write_bytes("sentence,y\ncaf\xe9 cr\xe8me,pos\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"source\[s\]\.path=.*cannot be read as csv") as info:
        load_source(_src(bad, SourceFormat.CSV))
    assert "\n" not in str(info.value)
    ds = load_source(_src(bad, SourceFormat.CSV, encoding="latin-1"))
    assert ds["sentence"] == ["café crème"]
    broken = tmp_path / "broken.csv"
    broken.write_text('sentence,y\n"unclosed,pos\nok,neg,extra,fields\n')
    with pytest.raises(DataError, match="cannot be read as csv"):
        load_source(_src(broken, SourceFormat.CSV))


def test_malformed_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"sentence": "ok", "y": "pos"}\n{not json\n')
    with pytest.raises(DataError, match="cannot be read as json"):
        load_source(_src(path, SourceFormat.JSON))


def test_builtin_needs_assets_and_known_id() -> None:
    with pytest.raises(DataError, match="prepared assets"):
        load_source(SourceConfig(name="b", path="vader_movie"))
    with pytest.raises(DataError, match="unknown builtin set"):
        load_source(SourceConfig(name="b", path="vader_imdb"), assets=None)


# ------------------------------------------------------------------------------------------
# Labels


@pytest.mark.parametrize(
    ("score", "expected"),
    [(-4.0, 0), (-1e-6, 0), (-1e-9, 1), (0.0, 1), (1e-9, 2), (0.5, 2)],
)
def test_bin_index_sign_bins(score: float, expected: int) -> None:
    assert bin_index(score, [-1e-9, 1e-9]) == expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [
        (-4.0, 0),
        (-2.4, 1),
        (-2.39, 1),
        (-0.8, 2),
        (0.0, 2),
        (0.79, 2),
        (0.8, 3),
        (2.4, 4),
        (4.0, 4),
    ],
)
def test_bin_index_sst5_bins(score: float, expected: int) -> None:
    # (s + 4) / 8 cut at 0.2/0.4/0.6/0.8 is s cut at -2.4/-0.8/0.8/2.4.
    assert bin_index(score, [-2.4, -0.8, 0.8, 2.4]) == expected
    assert expected == sum(((score + 4) / 8) >= c - 1e-12 for c in (0.2, 0.4, 0.6, 0.8))


def test_label_bins_with_drop_unmapped() -> None:
    src = SourceConfig(
        name="m",
        path="x",
        label_bins=[-1e-9, 1e-9],
        label_map={"0": "negative", "2": "positive"},
        drop_unmapped=True,
    )
    got = map_labels([1.5, 0.0, -0.2, "2"], src, ["negative", "positive"], "tasks[mr].train")
    assert got.keep == [0, 2, 3]
    assert got.labels == ["positive", "negative", "positive"]
    assert got.label_ids == [1, 0, 1]
    assert got.dropped == 1 and got.dropped_keys == {"1": 1}


def test_label_outside_map_is_an_error_unless_dropped() -> None:
    src = SourceConfig(name="m", path="x", label_map={"1": "positive", "0": "negative"})
    with pytest.raises(DataError, match=r"tasks\[mr\]\.train\.label_map='2'"):
        map_labels([1, 0, 2], src, ["negative", "positive"], "tasks[mr].train")
    src.drop_unmapped = True
    got = map_labels([1.0, 0, 2], src, ["negative", "positive"], "tasks[mr].train")
    assert got.labels == ["positive", "negative"] and got.dropped == 1


def test_map_class_must_be_in_classes() -> None:
    src = SourceConfig(name="m", path="x", label_map={"1": "good"})
    with pytest.raises(DataError, match=r"source\[m\]\.label_map"):
        map_labels([1], src, ["negative", "positive"], "w")


def test_identity_map_and_bins_without_map() -> None:
    src = SourceConfig(name="m", path="x")
    assert map_labels(["neutral", "negative"], src, ["negative", "neutral"], "w").label_ids == [
        1,
        0,
    ]
    binned = SourceConfig(name="m", path="x", label_bins=[0.0])
    assert map_labels([-1, 1], binned, ["negative", "positive"], "w").labels == [
        "negative",
        "positive",
    ]
    with pytest.raises(DataError, match="not a number"):
        map_labels(["high"], binned, ["negative", "positive"], "w")


# ------------------------------------------------------------------------------------------
# Cleaning


def test_cleaning_counts_each_rule() -> None:
    texts = [
        "  spaced\tout  ",  # stripped
        "",  # empty
        "ab",  # too short
        "x" * 30,  # too long
        "CafÃ©",  # mojibake repaired -> "Café"
        "Spaced out",  # duplicate of the first after normalisation
        "fish &amp; chips",  # entity
        "bell\x07 rings",  # control character
        "fine text",
        None,  # empty
    ]
    got = clean_texts(texts, CleaningConfig(min_chars=3, max_chars=20))
    assert got.texts == ["spaced out", "Café", "fish & chips", "bell rings", "fine text"]
    assert got.keep == [0, 4, 6, 7, 8]
    assert got.counts == {
        "fixed_encoding": 3,
        "stripped": 1,
        "empty": 2,
        "too_short": 1,
        "too_long": 1,
        "duplicate": 1,
    }


def test_cleaning_rules_can_be_switched_off() -> None:
    cfg = CleaningConfig(
        strip=False,
        fix_encoding=False,
        drop_empty=False,
        drop_duplicates=False,
        min_chars=0,
        max_chars=100,
    )
    got = clean_texts(["a", "a", "", "&amp;"], cfg)
    assert got.texts == ["a", "a", "", "&amp;"]
    assert set(got.counts.values()) == {0}


def test_fix_encoding_examples() -> None:
    assert fix_encoding("cafÃ© â€œniceâ€\x9d") == "café “nice”"
    assert fix_encoding("été à Zürich") == "été à Zürich"  # real accents are left alone
    assert fix_encoding("GoogleÕ¢_\x8aÎ_\x86¢s cars") == "Googles cars"
    assert fix_encoding("cars_\ufffd_.no") == "cars.no"


def test_normalize_text() -> None:
    assert normalize_text("The  FILM, was great!") == normalize_text("the film was great")
    assert normalize_text(":)") != normalize_text(":(")


# ------------------------------------------------------------------------------------------
# Row ids, splits, samples


def test_row_ids_are_stable_under_reordering() -> None:
    texts = ["a", "b", "a", "c"]
    ids = row_ids("src", texts)
    assert len(set(ids)) == 4 and ids == row_ids("src", texts)
    shuffled = row_ids("src", ["c", "a", "x", "b", "a"])
    assert {ids[1], ids[3]} <= set(shuffled)  # "b" and "c" keep their ids
    assert ids[0] == shuffled[1] and ids[2] == shuffled[4]  # occurrences of "a" keep order
    assert row_ids("other", ["a"])[0] != ids[0]


def test_stratified_split_is_deterministic_and_stratified() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 1
    train, test = stratified_split(labels, 0.3, seed=7)
    assert (train, test) == stratified_split(labels, 0.3, seed=7)
    assert (train, test) != stratified_split(labels, 0.3, seed=8)
    assert sorted(train + test) == list(range(81))
    counts = [sum(labels[i] == c for i in test) for c in (0, 1, 2)]
    assert counts == [15, 9, 0]  # the single row of class 2 stays in train


def test_stratified_sample_quotas() -> None:
    labels = [0] * 70 + [1] * 20 + [2] * 10
    got = stratified_sample(labels, 15, seed=0)
    assert len(got) == 15 and got == sorted(got)
    # 10.5, 3, 1.5 -> floors 10, 3, 1, remainder .5 tie -> class 0 first
    assert [sum(labels[i] == c for i in got) for c in (0, 1, 2)] == [11, 3, 1]
    assert stratified_sample(labels, 0, 0) == list(range(100))


# ------------------------------------------------------------------------------------------
# Pool and tasks end to end


def _movie_csv(tmp_path: Path, n: int = 60) -> Path:
    rows = [
        {
            "text": f"movie review number {i} {'good' if i % 2 else 'bad'}",
            "score": (1.5 if i % 2 else -1.5),
        }
        for i in range(n)
    ]
    rows.append({"text": "perfectly neutral", "score": 0.0})
    path = tmp_path / "movie.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _config(tmp_path: Path, pool_texts: list[str], **task_kw) -> PipelineConfig:
    pool_path = tmp_path / "pool.jsonl"
    pd.DataFrame({"text": pool_texts}).to_json(pool_path, orient="records", lines=True)
    pool = PoolConfig(
        sources=[
            SourceConfig(
                name="tweets", format=SourceFormat.JSON, path=str(pool_path), label_column=""
            )
        ],
        max_rows=0,
    )
    train = SourceConfig(
        name="movie",
        format=SourceFormat.CSV,
        path=str(_movie_csv(tmp_path)),
        label_column="score",
        label_bins=[-1e-9, 1e-9],
        label_map={"0": "negative", "2": "positive"},
        drop_unmapped=True,
    )
    task = TargetTaskConfig(name="mr", train=train, max_test=10, **task_kw)
    return PipelineConfig(pool=pool, tasks=[task])


def test_ingest_pool_and_tasks(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [f"tweet {i}" for i in range(40)] + ["tweet 1", "  "])
    pool = ingest_pool(PoolSpec.of(cfg), None, tmp_path / "out")
    table = pq.read_table(pool.ref.path)
    assert table.column_names == ["row_id", "text", "label", "label_id", "source"]
    assert table.num_rows == 40 and pool.stats["sources"]["tweets"]["duplicate"] == 1
    assert pool.stats["sources"]["tweets"]["empty"] == 1
    assert set(table.column("label_id").to_pylist()) == {-1}
    assert table.column("label").null_count == 40
    pool.ref.verify()

    tasks = ingest_tasks(TasksSpec.of(cfg), None, pool.ref, tmp_path / "tasks")
    train = pq.read_table(tmp_path / "tasks" / "mr" / "train.parquet").to_pandas()
    test = pq.read_table(tmp_path / "tasks" / "mr" / "test.parquet").to_pandas()
    assert len(test) == 10 and (test.label.value_counts() == 5).all()
    assert len(train) == 42  # 60 minus 18 held out (0.3 per class); the neutral row dropped
    assert not set(train.text) & set(test.text)
    summary = json.loads((tmp_path / "tasks" / "tasks.json").read_text())
    assert summary["mr"]["counts"]["test"] == {"negative": 5, "positive": 5}
    assert tasks.stats["mr"]["train_source"]["unmapped"] == 1

    again = ingest_tasks(TasksSpec.of(cfg), None, pool.ref, tmp_path / "tasks2")
    assert again.ref.sha256 == tasks.ref.sha256  # deterministic bytes


def test_pool_max_rows_is_a_seeded_sample(tmp_path: Path) -> None:
    cfg = _config(tmp_path, [f"tweet {i}" for i in range(100)])
    cfg.pool.max_rows = 25
    first = (
        pq.read_table(ingest_pool(PoolSpec.of(cfg), None, tmp_path / "a").ref.path)
        .column("row_id")
        .to_pylist()
    )
    second = (
        pq.read_table(ingest_pool(PoolSpec.of(cfg), None, tmp_path / "b").ref.path)
        .column("row_id")
        .to_pylist()
    )
    cfg.pool.seed = 1
    other = (
        pq.read_table(ingest_pool(PoolSpec.of(cfg), None, tmp_path / "c").ref.path)
        .column("row_id")
        .to_pylist()
    )
    assert len(first) == 25 and first == second and first != other


def test_source_max_rows(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["x1 y", "x2 y", "x3 y", "x4 y"])
    src = cfg.pool.sources[0]
    src.max_rows = 2
    rows, stats = load_rows(src, None, cfg.pool.classes, cfg.cleaning, 0, "pool.sources[0]")
    assert len(rows) == 2 and stats["sampled_out"] == 2


def test_leakage_check_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    leaked = [f"movie review number {i} {'good' if i % 2 else 'bad'}" for i in range(60)]
    cfg = _config(tmp_path, ["unrelated tweet", *[t.upper() for t in leaked]])
    pool = ingest_pool(PoolSpec.of(cfg), None, tmp_path / "out")
    with pytest.raises(
        DataError, match=r"tasks\[mr\]\.test=\d+: test texts also in the pre-training pool"
    ):
        ingest_tasks(TasksSpec.of(cfg), None, pool.ref, tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()
    assert not list(tmp_path.glob("tasks.tmp-*"))


def test_class_without_train_rows(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["a tweet"])
    task = cfg.tasks[0]
    task.classes = ["negative", "positive", "neutral"]
    task.verbalizer = ["bad", "good", "maybe"]
    with pytest.raises(
        DataError, match=r"tasks\[mr\]\.train=.*\['neutral'\] have no training rows"
    ):
        ingest_tasks(TasksSpec.of(cfg), None, None, tmp_path / "tasks")


def test_explicit_test_source_drops_train_duplicates(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["a tweet"])
    test_path = tmp_path / "test.csv"
    pd.DataFrame(
        {
            "text": [
                "movie review number 1 good",
                "brand new negative one",
                "brand new positive one",
            ],
            "score": [2.0, -2.0, 2.0],
        }
    ).to_csv(test_path, index=False)
    task = cfg.tasks[0]
    assert task.train is not None
    task.test = SourceConfig(
        **{**task.train.__dict__, "name": "movie-test", "path": str(test_path)}
    )
    result = ingest_tasks(TasksSpec.of(cfg), None, None, tmp_path / "tasks")
    assert result.stats["mr"]["test_source"]["duplicate"] == 1
    assert result.stats["mr"]["rows"] == {"train": 60, "test": 2}


def test_task_needs_labels(tmp_path: Path) -> None:
    cfg = _config(tmp_path, ["a tweet"])
    assert cfg.tasks[0].train is not None
    cfg.tasks[0].train.label_column = ""
    with pytest.raises(DataError, match=r"tasks\[mr\]\.train\.label_column"):
        ingest_tasks(TasksSpec.of(cfg), None, None, tmp_path / "tasks")
