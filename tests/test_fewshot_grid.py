"""Few-shot splits and the grid: every initialisation of a (task, shots, seed) sees one split."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from metapt_core.config import (
    FewShotConfig,
    GridConfig,
    InitMethod,
    PipelineConfig,
    Protocol,
    SourceConfig,
    TargetTaskConfig,
)
from metapt_core.errors import DataError
from metapt_core.fewshot.grid import Cell, build_grid, group_cells
from metapt_core.fewshot.sampling import sample_split

CLASSES = ["negative", "positive", "neutral"]


def rows(per_class: tuple[int, ...] = (30, 25, 20)) -> pd.DataFrame:
    data = []
    for c, n in enumerate(per_class):
        for i in range(n):
            data.append(
                {
                    "row_id": f"src:{c}:{i:03d}",
                    "text": f"t{c}{i}",
                    "label": CLASSES[c],
                    "label_id": c,
                }
            )
    return pd.DataFrame(data)


def config(**grid) -> PipelineConfig:
    task = lambda name: TargetTaskConfig(name=name, train=SourceConfig(name=name, path=name))  # noqa: E731
    return PipelineConfig(
        tasks=[task("mr"), task("cr")],
        fewshot=FewShotConfig(shots=[2, 4], seeds=[0, 1, 2]),
        grid=GridConfig(inits=list(InitMethod), **grid),
    )


def test_split_is_stratified_disjoint_and_seeded():
    df = rows()
    split = sample_split(df, CLASSES, 4, split_seed=3, dev_per_class=5)
    assert split.train_rows["label_id"].value_counts().to_dict() == {0: 4, 1: 4, 2: 4}
    assert split.dev_rows is not None
    assert split.dev_rows["label_id"].value_counts().to_dict() == {0: 5, 1: 5, 2: 5}
    assert not set(split.train_rows["row_id"]) & set(split.dev_rows["row_id"])
    again = sample_split(df, CLASSES, 4, split_seed=3, dev_per_class=5)
    assert list(again.train_rows["row_id"]) == list(split.train_rows["row_id"])
    assert again.split_id == split.split_id
    other = sample_split(df, CLASSES, 4, split_seed=4, dev_per_class=5)
    assert set(other.train_rows["row_id"]) != set(split.train_rows["row_id"])
    assert other.split_id != split.split_id


def test_split_ignores_row_order_and_nests_across_shots():
    df = rows()
    shuffled = df.sample(frac=1.0, random_state=0)
    a = sample_split(df, CLASSES, 4, 1)
    assert set(sample_split(shuffled, CLASSES, 4, 1).train_rows["row_id"]) == set(
        a.train_rows["row_id"]
    )
    assert set(sample_split(df, CLASSES, 2, 1).train_rows["row_id"]) <= set(a.train_rows["row_id"])
    # the dev set is the tail of each class's permutation: the same for every shots
    d2 = sample_split(df, CLASSES, 2, 1, dev_per_class=3).dev_rows
    d4 = sample_split(df, CLASSES, 4, 1, dev_per_class=3).dev_rows
    assert d2 is not None and d4 is not None and list(d2["row_id"]) == list(d4["row_id"])
    assert a.dev_rows is None


def test_too_few_rows_names_the_setting():
    with pytest.raises(DataError, match=r"fewshot.shots=21: class 'neutral' has only 20"):
        sample_split(rows(), CLASSES, 21, 0)
    with pytest.raises(DataError, match=r"fewshot.dev_per_class=10"):
        sample_split(rows(), CLASSES, 16, 0, dev_per_class=10)


def test_cell_seeds_and_ids():
    cell = Cell("mr", InitMethod.METAPT_MAML, 16, 2, pretrain_seed=3)
    # untrained prompts come from the pre-training seed, like PPT's and MetaPT's start
    assert (cell.split_seed, cell.train_seed, cell.init_seed) == (2, 10_002, 3)
    assert cell.cell_id == "mr__metapt_maml__k16__s2__p3"
    inner = Cell("mr", InitMethod.RANDOM, 16, 2, 3, Protocol.INNER)
    assert inner.cell_id == "mr__random__k16__s2__p3__inner"
    assert Cell("mr", InitMethod.RANDOM, 16, 2).split_key == cell.split_key


def test_grid_covers_every_cell_once():
    cfg = config()
    cells = build_grid(cfg)
    assert len(cells) == 2 * 2 * 3 * len(InitMethod)
    assert len({c.cell_id for c in cells}) == len(cells)
    two = dataclasses.replace(
        cfg,
        grid=dataclasses.replace(
            cfg.grid, pretrain_seeds=[0, 5], protocols=[Protocol.FEWSHOT, Protocol.INNER]
        ),
    )
    cells = build_grid(two)
    assert len(cells) == 2 * 2 * 3 * 2 * 2 * len(InitMethod)
    assert {c.pretrain_seed for c in cells} == {0, 5}
    assert len({c.cell_id for c in cells}) == len(cells)


def test_groups_pair_every_init_on_the_same_split():
    cfg = config()
    cells = build_grid(cfg)
    groups = group_cells(reversed(cells))
    assert len(groups) == 2 * 2 * 3
    df = rows((40, 40, 40))
    split_ids = {}
    for group in groups:
        assert {c.init for c in group} == set(InitMethod)
        assert len({(c.task, c.shots, c.seed, c.split_seed, c.train_seed) for c in group}) == 1
        # what run_cell_group samples for the group is what each cell alone would get
        ids = {sample_split(df, CLASSES, c.shots, c.split_seed).split_id for c in group}
        assert len(ids) == 1
        split_ids[group[0].split_key] = ids.pop()
    # different seeds (and shots) of a task give different splits
    assert split_ids[("mr", 4, 0)] != split_ids[("mr", 4, 1)] != split_ids[("mr", 4, 2)]
    assert split_ids[("mr", 2, 0)] != split_ids[("mr", 4, 0)]


def test_unbatched_groups_are_single_cells():
    cells = build_grid(config())
    assert all(len(g) == 1 for g in group_cells(cells, batched=False))
    assert len(group_cells(cells + cells, batched=False)) == len(cells)
