"""The evaluation stage of one (task, shots, seed) group: what the pipeline calls per group."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt_core.config import InitMethod, PipelineConfig
from metapt_core.fewshot.cells import run_cell_group, task_spec, zero_shot
from metapt_core.fewshot.grid import Cell
from metapt_core.lm import PromptModel
from metapt_core.prompt import load_prompt
from metapt_core.specs import EvalSpec
from metapt_core.store import ArtifactRef, atomic_path

Progress = Callable[[int, int, str], None]
CELLS_FILE = "cells.json"


@dataclass
class GroupResult:
    """Cells of one group, the backbone's zero-shot score where computed, and the stored file."""

    ref: ArtifactRef
    cells: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)


def evaluate_group(
    cfg: EvalSpec | PipelineConfig,
    task_name: str,
    tasks_ref: ArtifactRef,
    shots: int,
    seed: int,
    prompts: Mapping[str, ArtifactRef | dict[str, str] | None],
    model: PromptModel,
    out_dir: Path,
    progress: Progress | None = None,
) -> GroupResult:
    """Tune and test every initialisation of the grid on one few-shot split.

    ``cfg`` is what the group reads (:class:`~metapt_core.specs.EvalSpec`: its task, the tuning,
    the prompt, the initialisations, whether prompts train batched and whether this group also
    scores the zero-shot reference), or a whole config to take it from. Pre-trained
    initialisations (PPT, MetaPT) are read from ``prompts`` (init name -> prompt folder); random
    and sampled-vocabulary prompts are drawn per cell.

    Returns:
        A :class:`GroupResult` whose ``ref`` is ``out_dir/cells.json``.
    """
    spec = cfg if isinstance(cfg, EvalSpec) else EvalSpec.of(cfg, task_name, shots, seed)
    init_prompts = {}
    for name, ref in prompts.items():
        if ref is None:
            continue
        path = ref.path if isinstance(ref, ArtifactRef) else ref["path"]
        init_prompts[InitMethod(name)], _ = load_prompt(path)
    cells = [Cell(task=task_name, init=init, shots=shots, seed=seed) for init in spec.inits]
    if progress is not None:
        progress(0, 2, f"{task_name} k={shots} seed={seed}: tuning {len(cells)} prompts")
    # batch_prompts: all prompts of the split in one batched pass, else cell by cell
    groups = [cells] if spec.batch_prompts else [[cell] for cell in cells]
    results = [
        result
        for group in groups
        for result in run_cell_group(model, group, tasks_ref.path, init_prompts, spec)
    ]
    rows = [r.to_dict() for r in results]
    stats: dict[str, Any] = {}
    if spec.zero_shot:
        zs = zero_shot(
            model, task_spec(spec, task_name), tasks_ref.path, spec.fewshot.eval_batch_size
        )
        stats["zero_shot"] = {task_name: zs["accuracy"]}
        stats["zero_shot_macro_f1"] = {task_name: zs["macro_f1"]}
    if progress is not None:
        progress(2, 2, f"{task_name} k={shots} seed={seed}: done")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / CELLS_FILE) as tmp:
        tmp.write_text(
            json.dumps({"cells": rows, **stats}, indent=2, default=str) + "\n", encoding="utf-8"
        )
    return GroupResult(ref=ArtifactRef.of(out_dir / CELLS_FILE), cells=rows, stats=stats)
