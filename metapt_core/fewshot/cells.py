"""Pure grid-cell functions: tune and evaluate the cells of one split in one batched pass.

The orchestration layer calls :func:`run_cell_group` once per group of
:func:`~metapt_core.fewshot.grid.group_cells` (or :func:`run_cells` for a whole list); nothing
here knows about Prefect, retries or tracking.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metapt_core.config import (
    InitMethod,
    Optimizer,
    PipelineConfig,
    PromptInit,
    Protocol,
    TargetTaskConfig,
)
from metapt_core.errors import ConfigError, DataError
from metapt_core.fewshot.grid import Cell, group_cells
from metapt_core.fewshot.metrics import classification_metrics
from metapt_core.fewshot.sampling import FewShotSplit, sample_split
from metapt_core.fewshot.tuning import evaluate, predict_many, tune_prompts
from metapt_core.lm import EncodedBatch, PromptModel, TaskFormat
from metapt_core.prompt import init_prompt, label_word_prompt, task_description
from metapt_core.specs import EvalSpec, FewShotTuning

Progress = Callable[[int, int, str], None]


@dataclass
class CellResult:
    """The outcome of one grid cell (plain data, JSON-ready through :meth:`to_dict`).

    ``wall_seconds`` is the group's wall time divided by the cells trained together in it
    (``group_size``), so sums over cells stay the real total.
    """

    cell_id: str
    task: str
    init: str
    shots: int
    seed: int
    split_seed: int
    train_seed: int
    split_id: str  # fingerprint of the split's row ids: equal for every init of a split
    test_accuracy: float
    test_macro_f1: float
    n_test: int
    n_train: int
    n_dev: int
    dev_accuracy: float | None
    dev_macro_f1: float | None
    best_step: int
    wall_seconds: float
    group_size: int
    pretrain_seed: int = 0
    protocol: str = Protocol.FEWSHOT.value
    test_correct: str = ""  # "1"/"0" per test row, in order: the row level of the statistics
    history: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def target_task(cfg: EvalSpec, name: str) -> TargetTaskConfig:
    """The target task called ``name`` in an :class:`~metapt_core.specs.EvalSpec` (its group's)."""
    for task in cfg.tasks:
        if task.name == name:
            return task
    raise ConfigError(
        "tasks", name, f"no such task (known: {', '.join(t.name for t in cfg.tasks)})"
    )


def load_task_split(tasks_dir: str | Path, task: str, split: str) -> pd.DataFrame:
    """Rows of ``<tasks_dir>/<task>/<split>.parquet`` (written by the ingest stage)."""
    path = Path(tasks_dir) / task / f"{split}.parquet"
    if not path.is_file():
        raise DataError(f"tasks[{task}].{split}", str(path), "file not found")
    frame = pd.read_parquet(path)
    for column in ("row_id", "text", "label_id"):
        if column not in frame.columns:
            raise DataError(f"tasks[{task}].{split}", str(path), f"has no {column!r} column")
    return frame


def encode_rows(model: PromptModel, rows: pd.DataFrame, fmt: TaskFormat) -> EncodedBatch:
    """Encode a rows frame with its gold ``label_id``."""
    return model.encode(
        rows["text"].astype(str).tolist(), rows["label_id"].astype(int).tolist(), fmt
    )


def initial_prompt(
    model: PromptModel,
    cell: Cell,
    init_prompts: Mapping[InitMethod, Tensor],
    cfg: EvalSpec,
) -> Tensor:
    """The starting prompt ``[P, d]`` of a cell.

    Untrained prompts are drawn with a generator seeded by ``cell.init_seed`` (the pre-training
    seed): random, sampled vocabulary, label words (Lester et al. 2021: the task's label words'
    embeddings, then sampled vocabulary), text (the task's description). PPT and MetaPT prompts
    are taken from ``init_prompts``.
    """
    generator = torch.Generator().manual_seed(cell.init_seed)
    if cell.init in (InitMethod.RANDOM, InitMethod.SAMPLE_VOCAB):
        how = PromptInit.RANDOM if cell.init is InitMethod.RANDOM else PromptInit.SAMPLE_VOCAB
        return init_prompt(model, dataclasses.replace(cfg.prompt, init=how), generator)
    if cell.init in (InitMethod.LABEL_WORDS, InitMethod.TEXT):
        task = target_task(cfg, cell.task)
        if cell.init is InitMethod.LABEL_WORDS:
            fmt = TaskFormat.of(task.template, task.verbalizer, name=task.name)
            return label_word_prompt(model, model.label_tokens(fmt), cfg.prompt, generator)
        text = task_description(task.verbalizer, task.description)
        text_cfg = dataclasses.replace(cfg.prompt, init=PromptInit.TEXT, init_text=text)
        return init_prompt(model, text_cfg, generator)
    if cell.init not in init_prompts:
        raise ConfigError("grid.inits", cell.init.value, "no pre-trained prompt was given for it")
    return init_prompts[cell.init].detach().float().cpu()


def protocol_tuning(
    cfg: EvalSpec, protocol: Protocol, n_train: int, inner_lr: float | None
) -> FewShotTuning:
    """The tuning settings of a protocol: ``fewshot`` as configured, or the inner rule
    (``inner.steps`` full-batch SGD steps at alpha, no dev selection; the trust region, when
    the rule has one, is :func:`run_cell_group`'s ``inner_ratio``)."""
    if protocol is Protocol.FEWSHOT:
        return cfg.fewshot
    if inner_lr is None:
        raise ConfigError(
            "meta.inner_lr", "auto", "the inner protocol needs a MetaPT or PPT prompt's alpha"
        )
    return dataclasses.replace(
        cfg.fewshot,
        optimizer=Optimizer.SGD,
        lr=float(inner_lr),
        steps=cfg.inner.steps,
        batch_size=n_train,
    )


def correct_string(predictions: Any, gold: Any) -> str:
    """Per-row correctness as ``"0"``/``"1"`` characters, in test-row order."""
    return "".join("1" if int(p) == int(g) else "0" for p, g in zip(predictions, gold, strict=True))


def run_cell_group(
    model: PromptModel,
    cells: Sequence[Cell],
    tasks_dir: str | Path,
    init_prompts: Mapping[InitMethod, Tensor],
    cfg: EvalSpec,
    inner_lr: float | None = None,
    untuned: list[dict[str, Any]] | None = None,
    inner_ratio: float = 0.0,
) -> list[CellResult]:
    """Tune and evaluate cells that share one split, training each protocol's prompts together.

    Args:
        model: the frozen prompt model.
        cells: cells with the same (task, shots, seed) (see ``group_cells``); those of one
            protocol are tuned in one batched pass.
        tasks_dir: the ingest output holding ``<task>/{train,test}.parquet``.
        init_prompts: loaded ``[P, d]`` prompts of the pre-trained initialisations (PPT, MetaPT).
        cfg: the group's :class:`~metapt_core.specs.EvalSpec` (``fewshot``, ``prompt``, its
            task, ``inner``).
        inner_lr: alpha of the inner-rule protocol (None: only the configured protocol).
        inner_ratio: r of the inner rule's trust region (``meta.max_step_ratio`` of the prompt
            whose rule it is; 0: plain SGD at alpha).
        untuned: when given, one ``{"task", "init", "pretrain_seed", "accuracy", "macro_f1",
            "n", "test_correct"}`` per distinct initialisation is appended: its test score with
            no tuning at all.

    Returns:
        One result per cell, in input order.
    """
    if not cells:
        return []
    keys = {cell.split_key for cell in cells}
    if len(keys) != 1:
        raise ValueError(f"a cell group must share (task, shots, seed), got {sorted(keys)}")
    start = time.perf_counter()
    rows = _encode_split(model, cells[0], tasks_dir, cfg)
    starts = _starting_prompts(model, cells, init_prompts, cfg)
    if untuned is not None:
        untuned.extend(_untuned_scores(model, cells, starts, rows, cfg.fewshot.eval_batch_size))
    results: dict[int, CellResult] = {}
    for protocol in dict.fromkeys(c.protocol for c in cells):
        results.update(
            _tune_protocol(model, cells, protocol, starts, rows, cfg, inner_lr, inner_ratio)
        )
    per_cell = (time.perf_counter() - start) / len(cells)
    for result in results.values():
        result.wall_seconds = per_cell
    return [results[i] for i in range(len(cells))]


@dataclass
class _SplitRows:
    """A cell group's few-shot split and its encoded rows."""

    split: FewShotSplit
    train: EncodedBatch
    dev: EncodedBatch | None  # None without a dev set
    test: EncodedBatch  # the task's whole test split
    gold: np.ndarray  # int64 [n_test], the test rows' class ids


def _encode_split(
    model: PromptModel, cell: Cell, tasks_dir: str | Path, cfg: EvalSpec
) -> _SplitRows:
    """Sample ``cell``'s split of its task's train rows and encode it with the test rows."""
    task = target_task(cfg, cell.task)
    fmt = TaskFormat.of(task.template, task.verbalizer, name=task.name)
    split = sample_split(
        load_task_split(tasks_dir, cell.task, "train"),
        task.classes,
        cell.shots,
        cell.split_seed,
        cfg.fewshot.dev_per_class,
    )
    train_batch = encode_rows(model, split.train_rows, fmt)
    dev_batch = None if split.dev_rows is None else encode_rows(model, split.dev_rows, fmt)
    test_batch = encode_rows(model, load_task_split(tasks_dir, cell.task, "test"), fmt)
    assert test_batch.labels is not None
    return _SplitRows(split, train_batch, dev_batch, test_batch, test_batch.labels.cpu().numpy())


def _starting_prompts(
    model: PromptModel,
    cells: Sequence[Cell],
    init_prompts: Mapping[InitMethod, Tensor],
    cfg: EvalSpec,
) -> list[Tensor]:
    """Each cell's initial prompt ``[P, d]``, checked to share one shape."""
    starts = [initial_prompt(model, cell, init_prompts, cfg) for cell in cells]
    shapes = {tuple(p.shape) for p in starts}
    if len(shapes) != 1:
        raise ConfigError(
            "prompt.length",
            cfg.prompt.length,
            f"initial prompts of {cells[0].task} differ in shape: {sorted(shapes)}",
        )
    return starts


def _untuned_scores(
    model: PromptModel,
    cells: Sequence[Cell],
    starts: list[Tensor],
    rows: _SplitRows,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Test scores of each distinct (init, pre-training seed)'s prompt with no tuning, in the
    order of its first cell."""
    distinct = {(c.init, c.pretrain_seed): i for i, c in reversed(list(enumerate(cells)))}
    order = sorted(distinct.values())
    preds = predict_many(model, torch.stack([starts[i] for i in order]), rows.test, batch_size)
    scored = []
    for i, pred in zip(order, preds, strict=True):
        scores = classification_metrics(rows.gold, pred)
        scored.append({
            "task": cells[i].task, "init": cells[i].init.value,
            "pretrain_seed": cells[i].pretrain_seed, "accuracy": scores["accuracy"],
            "macro_f1": scores["macro_f1"], "n": int(scores["n"]),
            "test_correct": correct_string(pred, rows.gold),
        })  # fmt: skip
    return scored


def _tune_protocol(
    model: PromptModel,
    cells: Sequence[Cell],
    protocol: Protocol,
    starts: list[Tensor],
    rows: _SplitRows,
    cfg: EvalSpec,
    inner_lr: float | None,
    inner_ratio: float,
) -> dict[int, CellResult]:
    """Tune the prompts of ``protocol``'s cells together and score them on the test rows;
    results keyed by the cell's index in ``cells``."""
    members = [i for i, c in enumerate(cells) if c.protocol is protocol]
    split = rows.split
    tuning = protocol_tuning(cfg, protocol, len(split.train_rows), inner_lr)
    dev = rows.dev if protocol is Protocol.FEWSHOT else None
    ratio = inner_ratio if protocol is Protocol.INNER else 0.0
    trained, history = tune_prompts(
        model, torch.stack([starts[i] for i in members]), rows.train, tuning,
        cells[0].train_seed, dev, ratio,
    )  # fmt: skip
    preds = predict_many(model, trained, rows.test, cfg.fewshot.eval_batch_size)
    n_dev = 0 if dev is None or split.dev_rows is None else len(split.dev_rows)
    results: dict[int, CellResult] = {}
    for m, i in enumerate(members):
        cell = cells[i]
        tests = classification_metrics(rows.gold, preds[m])
        best_dev = history.best_dev[m]
        results[i] = CellResult(
            cell_id=cell.cell_id,
            task=cell.task,
            init=cell.init.value,
            shots=cell.shots,
            seed=cell.seed,
            split_seed=cell.split_seed,
            train_seed=cell.train_seed,
            split_id=split.split_id,
            test_accuracy=tests["accuracy"],
            test_macro_f1=tests["macro_f1"],
            n_test=int(tests["n"]),
            n_train=len(split.train_rows),
            n_dev=n_dev,
            dev_accuracy=None if best_dev is None else best_dev["accuracy"],
            dev_macro_f1=None if best_dev is None else best_dev["macro_f1"],
            best_step=history.best_step[m],
            wall_seconds=0.0,
            group_size=len(cells),
            pretrain_seed=cell.pretrain_seed,
            protocol=protocol.value,
            test_correct=correct_string(preds[m], rows.gold),
            history=history.for_prompt(m),
        )
    return results


def run_cells(
    model: PromptModel,
    cells: Sequence[Cell],
    tasks_dir: str | Path,
    init_prompts: Mapping[InitMethod, Tensor],
    cfg: PipelineConfig,
    progress: Progress | None = None,
) -> list[CellResult]:
    """Run cells group by group in this process (batched when ``grid.batch_prompts``), each
    group with its :class:`~metapt_core.specs.EvalSpec` taken from ``cfg``."""
    groups = group_cells(cells, batched=cfg.grid.batch_prompts)
    results: list[CellResult] = []
    for i, group in enumerate(groups):
        spec = EvalSpec.of(cfg, group[0].task, group[0].shots, group[0].seed)
        results.extend(run_cell_group(model, group, tasks_dir, init_prompts, spec))
        if progress is not None:
            progress(i + 1, len(groups), group[0].cell_id)
    return results


def zero_shot(
    model: PromptModel, task: TargetTaskConfig, tasks_dir: str | Path, batch_size: int = 32
) -> dict[str, float]:
    """Test accuracy and macro-F1 of the backbone with no prompt (a ``[0, d]`` prompt).

    Returns:
        ``{"accuracy", "macro_f1", "n"}`` on the task's full test split.
    """
    fmt = TaskFormat.of(task.template, task.verbalizer, name=task.name)
    test_batch = encode_rows(model, load_task_split(tasks_dir, task.name, "test"), fmt)
    empty = torch.zeros((0, model.embed_dim), dtype=torch.float32)
    return evaluate(model, empty, test_batch, batch_size)
