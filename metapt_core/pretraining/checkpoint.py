"""Training checkpoints of a prompt: written atomically, read without unpickling code.

A checkpoint is one ``torch.save`` file holding only tensors and plain data (the prompt, the
optimiser's state dict, the step, the history and a fingerprint of the settings), so it loads
with ``torch.load(weights_only=True)``. It lives in a scratch folder beside the final artifact
(``<out_dir>.ckpt/``), never inside it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metapt_core.store import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"
FORMAT = 2


@dataclass
class TrainState:
    """Everything needed to continue a prompt's training exactly where it stopped.

    Attributes:
        step: outer steps completed.
        prompt: ``Tensor[P, d]``, the current prompt.
        optimizer: the outer optimiser's ``state_dict()``.
        history: one dict per step (losses, validation metrics).
        fingerprint: hash of the settings the run was started with.
        best: the prompt of the best validation so far (``meta.keep_best``), or None.
        best_step: the step of ``best`` (-1: none).
    """

    step: int
    prompt: Tensor
    optimizer: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""
    best: Tensor | None = None
    best_step: int = -1


def checkpoint_dir(out_dir: str | Path) -> Path:
    """The scratch folder for ``out_dir``'s checkpoints: ``<out_dir>.ckpt`` beside it."""
    out = Path(out_dir)
    return out.with_name(f"{out.name}.ckpt")


def save_checkpoint(folder: str | Path, state: TrainState) -> Path:
    """Write ``state`` to ``folder/last.pt`` atomically (the previous one stays until then)."""
    target = Path(folder) / CHECKPOINT_FILE
    payload = {
        "format": FORMAT,
        "step": int(state.step),
        "prompt": state.prompt.detach().cpu().clone(),
        "optimizer": state.optimizer,
        "history": state.history,
        "fingerprint": state.fingerprint,
        "best": None if state.best is None else state.best.detach().cpu().clone(),
        "best_step": int(state.best_step),
    }
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return target


def load_checkpoint(folder: str | Path, fingerprint: str) -> TrainState | None:
    """The last checkpoint in ``folder`` if it exists and was made with the same settings.

    A checkpoint of other settings, or one that cannot be read, is ignored with a warning (the
    run starts over) rather than resumed into a different experiment.
    """
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start over, say why
        log.warning("ignoring unreadable checkpoint %s (%s)", path, str(exc).splitlines()[0][:120])
        return None
    if payload.get("format") != FORMAT or payload.get("fingerprint") != fingerprint:
        log.warning("ignoring checkpoint %s: it was made with other settings", path)
        return None
    return TrainState(
        step=int(payload["step"]),
        prompt=payload["prompt"],
        optimizer=payload["optimizer"],
        history=list(payload["history"]),
        fingerprint=payload["fingerprint"],
        best=payload.get("best"),
        best_step=int(payload.get("best_step", -1)),
    )


def remove_checkpoints(folder: str | Path) -> None:
    """Delete a checkpoint folder once its run's artifact is written."""
    shutil.rmtree(folder, ignore_errors=True)
