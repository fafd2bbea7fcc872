"""The few-shot protocol: splits, the evaluation grid, batched prompt tuning, grid cells."""

from metapt_core.fewshot.cells import CellResult, run_cell_group, run_cells, zero_shot
from metapt_core.fewshot.grid import Cell, build_grid, group_cells
from metapt_core.fewshot.metrics import classification_metrics
from metapt_core.fewshot.sampling import FewShotSplit, sample_split
from metapt_core.fewshot.tuning import TuneHistory, evaluate, tune_prompts

__all__ = [
    "Cell",
    "CellResult",
    "FewShotSplit",
    "TuneHistory",
    "build_grid",
    "classification_metrics",
    "evaluate",
    "group_cells",
    "run_cell_group",
    "run_cells",
    "sample_split",
    "tune_prompts",
    "zero_shot",
]
