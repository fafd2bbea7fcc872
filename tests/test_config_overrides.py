"""Settings a person can type: YAML 1.2 numbers, one list item by name or index, enums."""

from __future__ import annotations

import pytest

from metapt_core.config import (
    DType,
    HdbscanSelection,
    Optimizer,
    apply_override,
    load_config,
    load_yaml,
)
from metapt_core.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-3", 0.001),
        ("5E+2", 500.0),
        ("-2.5e-4", -0.00025),
        ("0.3", 0.3),
        (".5", 0.5),
        ("3", 3),
        ("1_000", 1000),
        (".inf", float("inf")),
        ("adam", "adam"),
        ("1e", "1e"),
    ],
)
def test_yaml_1_2_numbers(text: str, value: object) -> None:
    got = load_yaml(text)
    assert got == value and type(got) is type(value)


def test_exponent_float_on_the_command_line() -> None:
    cfg = load_config("smoke", overrides=["meta.inner_lr=1e-3", "fewshot.lr=3E-1"])
    assert cfg.meta.inner_lr == 0.001 and cfg.fewshot.lr == 0.3


def test_one_list_item_by_name_or_index() -> None:
    base = load_config("default")
    names = [t.name for t in base.tasks]
    cfg = load_config("default", overrides=[f"tasks[{names[-1]}].max_test=50"])
    assert [t.max_test for t in cfg.tasks] == [t.max_test for t in base.tasks[:-1]] + [50]
    cfg = load_config("default", overrides=["tasks.0.max_test=7", "tasks[1].seed=3"])
    assert cfg.tasks[0].max_test == 7 and cfg.tasks[1].seed == 3
    assert cfg.tasks[2] == base.tasks[2]
    # a nested field of one item; the other items keep theirs
    cfg = load_config("default", overrides=[f"tasks[{names[0]}].train.max_rows=40"])
    assert cfg.tasks[0].train is not None and cfg.tasks[0].train.max_rows == 40
    assert cfg.tasks[1] == base.tasks[1]


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("tasks[imdb].max_test=5", "tasks has no item 'imdb' (items: mr"),
        ("tasks.9.max_test=5", "tasks has no item '9'"),
        ("meta[0].inner_lr=1", "meta is not a list"),
        ("meta.inner_lr.x=1", "meta.inner_lr is not a section"),
        ("a-b=1", "'a-b' is not a setting name"),
        ("noequals", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_override(override: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("default", overrides=[override])
    assert info.value.field == "--set" and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_a_whole_mapping_merges_and_a_list_replaces() -> None:
    assert apply_override({}, "meta.inner_lr=1e-2") == {"meta": {"inner_lr": 0.01}}
    data = {"meta": {"inner_lr": 0.3, "outer_lr": 0.03}, "fewshot": {"shots": [16]}}
    merged = apply_override(data, "meta={inner_lr: 0.1}")
    assert merged["meta"] == {"inner_lr": 0.1, "outer_lr": 0.03}
    assert apply_override(data, "fewshot.shots=[4, 8]")["fewshot"]["shots"] == [4, 8]
    assert data["meta"]["inner_lr"] == 0.3  # the input is not changed


def test_free_string_choices_are_enums() -> None:
    cfg = load_config(
        "smoke",
        overrides=[
            "meta.outer_optimizer=sgd",
            "fewshot.optimizer=sgd",
            "cluster.hdbscan_selection=leaf",
            "backbone.dtype=bfloat16",
        ],
    )
    assert cfg.meta.outer_optimizer is Optimizer.SGD and cfg.fewshot.optimizer is Optimizer.SGD
    assert cfg.cluster.hdbscan_selection is HdbscanSelection.LEAF
    assert cfg.backbone.dtype is DType.BFLOAT16
    with pytest.raises(ConfigError, match=r"cluster.hdbscan_selection='tree': must be one of"):
        load_config("smoke", overrides=["cluster.hdbscan_selection=tree"])


def test_no_top_level_seed() -> None:
    """Each stage has its own seed; a pipeline-wide seed that nothing read is gone."""
    with pytest.raises(ConfigError, match="unknown setting"):
        load_config("smoke", overrides=["seed=1"])
