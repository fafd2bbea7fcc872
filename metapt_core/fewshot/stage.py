"""The evaluation stage of one (task, shots, seed) group: what the pipeline calls per group."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt_core.config import InitMethod, PipelineConfig, Protocol
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
    """Tune and test every initialisation of the grid on one few-shot split, for one
    pre-training seed, under each protocol.

    ``cfg`` is what the group reads (:class:`~metapt_core.specs.EvalSpec`: its task, its
    pre-training seed, the tuning and protocols, the prompt, the initialisations, whether prompts
    train batched, whether this group also scores the zero-shot reference and the untuned
    prompts), or a whole config to take it from. Pre-trained initialisations (PPT, MetaPT) are
    read from ``prompts`` (init name -> prompt folder of this pre-training seed); untrained ones
    are drawn from the pre-training seed (:mod:`metapt_core.fewshot.grid`).

    Returns:
        A :class:`GroupResult` whose ``ref`` is ``out_dir/cells.json``.
    """
    spec = cfg if isinstance(cfg, EvalSpec) else EvalSpec.of(cfg, task_name, shots, seed)
    init_prompts = {}
    warnings: dict[str, list[str]] = {}
    alphas: list[float] = []
    for name, ref in prompts.items():
        if ref is None:
            continue
        path = ref.path if isinstance(ref, ArtifactRef) else ref["path"]
        init_prompts[InitMethod(name)], meta = load_prompt(path)
        if meta.get("warnings"):
            warnings[name] = list(meta["warnings"])
        if "inner_lr" in meta:
            alphas.append(float(meta["inner_lr"]))
    inner_lr = inner_alpha(spec, alphas)
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
            model, group, tasks_ref.path, init_prompts, spec, inner_lr, untuned
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
            model, task_spec(spec, task_name), tasks_ref.path, spec.fewshot.eval_batch_size
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


def inner_alpha(spec: EvalSpec, alphas: list[float]) -> float | None:
    """Alpha of the inner-rule protocol: ``meta.inner_lr`` when a number, else (``auto``) the
    alpha the group's pre-trained prompts chose (one per pre-training seed: the calibration
    depends on the seed's initial prompt and held-out clusters only). None when not needed."""
    if Protocol.INNER not in spec.protocols:
        return None
    if not isinstance(spec.inner.lr, str):
        return float(spec.inner.lr)
    if not alphas:
        return None
    if max(alphas) - min(alphas) > 1e-12:
        from metapt_core.errors import DataError

        raise DataError(
            "meta.inner_lr",
            sorted(set(alphas)),
            "pre-trained prompts of one seed chose different alphas",
        )
    return alphas[0]
