"""The evaluation stage of one (task, shots, seed) group: what the pipeline calls per group."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt_core.config import InitMethod, Protocol
from metapt_core.fewshot.cells import run_cell_group, target_task, zero_shot
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
    spec: EvalSpec,
    task_name: str,
    tasks_ref: ArtifactRef,
    shots: int,
    seed: int,
    prompts: Mapping[str, ArtifactRef | dict[str, str] | None],
    model: PromptModel,
    out_dir: Path,
    progress: Progress | None = None,
) -> GroupResult:
    """Tune and test every initialisation of the grid on one few-shot split, for one
    pre-training seed, under each protocol.

    ``spec`` is what the group reads (:class:`~metapt_core.specs.EvalSpec`, built with
    ``EvalSpec.of(cfg, task_name, shots, seed, pretrain_seed)``: its task, its pre-training seed,
    the tuning and protocols, the prompt, the initialisations, whether prompts train batched,
    whether this group also scores the zero-shot reference and the untuned prompts). Pre-trained
    initialisations (PPT, MetaPT) are read from ``prompts`` (init name -> prompt folder of this
    pre-training seed); untrained ones are drawn from the pre-training seed
    (:mod:`metapt_core.fewshot.grid`).

    Returns:
        A :class:`GroupResult` whose ``ref`` is ``out_dir/cells.json``.
    """
    init_prompts = {}
    warnings: dict[str, list[str]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for name, ref in prompts.items():
        if ref is None:
            continue
        path = ref.path if isinstance(ref, ArtifactRef) else ref["path"]
        init_prompts[InitMethod(name)], metas[name] = load_prompt(path)
        if metas[name].get("warnings"):
            warnings[name] = list(metas[name]["warnings"])
    rule = inner_rule(spec, metas)
    inner_lr, inner_ratio = (None, 0.0) if rule is None else rule
    pseed = spec.pretrain_seed
    cells = [
        Cell(task_name, init, shots, seed, pseed, protocol)
        for protocol in spec.protocols
        for init in spec.inits
    ]
    if progress is not None:
        progress(0, 2, f"{task_name} k={shots} seed={seed} p{pseed}: tuning {len(cells)} prompts")
    # batch_prompts: each protocol's prompts in one batched pass, else cell by cell
    groups = [cells] if spec.batch_prompts else [[cell] for cell in cells]
    untuned: list[dict[str, Any]] | None = [] if spec.untuned else None
    results = []
    for group in groups:
        results += run_cell_group(
            model, group, tasks_ref.path, init_prompts, spec, inner_lr, untuned, inner_ratio
        )
    rows = [r.to_dict() for r in results]
    stats: dict[str, Any] = {"pretrain_seed": pseed}
    if untuned is not None:
        once = {(u["init"], u["pretrain_seed"]): u for u in reversed(untuned)}
        stats["untuned"] = [
            once[k] for k in dict.fromkeys((u["init"], u["pretrain_seed"]) for u in untuned)
        ]
    if warnings:
        stats["pretrain_warnings"] = warnings
    if spec.zero_shot:
        zs = zero_shot(
            model, target_task(spec, task_name), tasks_ref.path, spec.fewshot.eval_batch_size
        )
        stats["zero_shot"] = {task_name: zs["accuracy"]}
        stats["zero_shot_macro_f1"] = {task_name: zs["macro_f1"]}
    if progress is not None:
        progress(2, 2, f"{task_name} k={shots} seed={seed} p{pseed}: done")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / CELLS_FILE) as tmp:
        tmp.write_text(
            json.dumps({"cells": rows, **stats}, indent=2, default=str) + "\n", encoding="utf-8"
        )
    return GroupResult(ref=ArtifactRef.of(out_dir / CELLS_FILE), cells=rows, stats=stats)


def inner_rule(
    spec: EvalSpec, metas: Mapping[str, Mapping[str, Any]]
) -> tuple[float, float] | None:
    """``(alpha, r)`` of the inner-rule protocol: the rule a MetaPT prompt of this group was
    trained with, else PPT's, applied to every initialisation (as the meta-objective check does).

    alpha is ``meta.inner_lr`` when a number, else (``auto``) the prompt's recorded final
    ``inner_lr`` (MetaPT's after the curvature cap; PPT's is its seed's calibrated alpha); r is
    the prompt's recorded ``max_step_ratio`` (0 where none is recorded: plain SGD at alpha).
    None when the protocol is not run, or alpha is ``auto`` and no prompt records one.

    Args:
        metas: init name -> its ``prompt.json`` metadata, for the group's pre-trained prompts.
    """
    if Protocol.INNER not in spec.protocols:
        return None
    ordered = sorted(metas.items(), key=lambda item: (not item[0].startswith("metapt_"), item[0]))
    rules = [meta for _, meta in ordered if "inner_lr" in meta]
    ratio = float(rules[0].get("max_step_ratio", 0.0)) if rules else 0.0
    if not isinstance(spec.inner.lr, str):
        return float(spec.inner.lr), ratio
    if not rules:
        return None
    return float(rules[0]["inner_lr"]), ratio
