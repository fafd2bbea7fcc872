"""The training loop PPT and MetaPT share, and the prompt folder it ends in.

:func:`train_prompt` applies a (pseudo-)gradient per step with an outer optimiser, optionally
clipped, validates every ``val_every`` steps, keeps the best validated prompt when asked, and
checkpoints atomically so that a resumed run replays the remaining steps exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metapt_core.pretraining import distributed as dist_utils
from metapt_core.pretraining.checkpoint import (
    TrainState,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from metapt_core.store import ArtifactRef, atomic_path, atomic_write_json

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
StepFn = Callable[[int, Tensor], tuple[Tensor, dict[str, float]]]
ValFn = Callable[[Tensor], dict[str, float]]


@dataclass
class PretrainResult:
    """A pre-trained prompt folder and what happened while making it.

    Attributes:
        ref: the prompt folder (``prompt.safetensors``, ``prompt.json``, ``history.json``).
        metrics: final plain-data figures (losses, validation, examples seen, seconds).
        history: one dict per outer step.
    """

    ref: ArtifactRef
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`train_prompt` runs: length, periods, selection, clipping, identity.

    ``select_on`` names the validation metric (lower is better) that ``keep_best`` minimises;
    ``clip_grad_norm`` > 0 rescales a step's gradient ``g`` to ``g * min(1, c / ||g||)``.
    """

    total_steps: int
    val_every: int
    checkpoint_every: int
    fingerprint: str
    name: str = "train"
    keep_best: bool = False
    select_on: str = "val_loss"
    clip_grad_norm: float = 0.0
    warmup_steps: int = 0
    final_lr_fraction: float = 1.0


def lr_factor(step: int, total: int, warmup: int, final_fraction: float) -> float:
    """The outer rate of step ``t`` (1-based) as a fraction of the configured one.

    ``t / W`` during the warm-up (``t <= W``), then a cosine from 1 at ``t = W`` to ``f`` at
    ``t = T``: ``f + (1 - f) (1 + cos(pi (t - W) / (T - W))) / 2``. A pure function of the step,
    so a resumed run needs no scheduler state.
    """
    if warmup > 0 and step <= warmup:
        return step / warmup
    if final_fraction >= 1.0 or total <= warmup:
        return 1.0
    progress = (step - warmup) / (total - warmup)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


def clip_gradient(grad: Tensor, max_norm: float) -> tuple[Tensor, float]:
    """``(g * min(1, max_norm / ||g||), ||g||)``; ``max_norm`` 0 leaves ``g`` as it is."""
    norm = float(grad.detach().float().norm())
    if max_norm > 0 and norm > max_norm:
        return grad * (max_norm / norm), norm
    return grad, norm


def train_prompt(
    initial: Tensor,
    optimizer_factory: Callable[[list[Tensor]], torch.optim.Optimizer],
    step_fn: StepFn,
    val_fn: ValFn | None,
    settings: LoopSettings,
    ckpt_dir: Path,
    progress: Progress | None = None,
    resume: bool = True,
    restore: Callable[[list[dict[str, Any]]], None] | None = None,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Optimise a prompt with a given (pseudo-)gradient, checkpointing and validating.

    Step ``t`` (1-based) calls ``step_fn(t, prompt) -> (grad [P, d], metrics)``, clips it
    (``settings.clip_grad_norm``), sets ``prompt.grad`` and steps the optimiser; the record of
    the step gets ``grad_norm`` (before clipping). Every random draw inside ``step_fn`` must
    come from ``t`` (see :func:`metapt_core.pretraining.episodes.rng_for`): then resuming from a
    checkpoint at step ``s`` replays steps ``s+1..T`` exactly as an uninterrupted run would.

    Args:
        initial: the starting prompt ``Tensor[P, d]`` (on the model's device).
        optimizer_factory: builds the optimiser over ``[prompt]``.
        step_fn: the gradient of one step.
        val_fn: validation metrics of a prompt, or None.
        settings: steps, periods, selection, clipping and the run's fingerprint.
        ckpt_dir: the scratch folder for checkpoints (rank 0 writes it).
        progress: ``progress(done, total, message)`` after each step.
        resume: continue from a matching checkpoint in ``ckpt_dir`` if there is one.
        restore: called with the checkpoint's history on resume, so that ``step_fn`` can take
            back state it carries between steps (MetaPT's current inner rate).

    Returns:
        ``(prompt, history)``: the final prompt (the best validated one under ``keep_best``,
        detached) and one dict per step (step 0 holds the validation of the initial prompt; the
        kept step is marked ``"kept": 1``).
    """
    prompt = torch.nn.Parameter(initial.detach().clone())
    optimizer = optimizer_factory([prompt])
    base_lrs = [float(group["lr"]) for group in optimizer.param_groups]  # before any resume
    state = _LoopState(prompt, optimizer, base_lrs)
    saved = load_checkpoint(ckpt_dir, settings.fingerprint) if resume else None
    validating = val_fn is not None and settings.val_every > 0
    if saved is not None:
        _resume(state, saved, restore, settings, ckpt_dir)
    elif validating:
        assert val_fn is not None
        state.history.append({"step": 0, **val_fn(prompt.detach())})
        state.consider(state.history[0], prompt, settings)
    main = dist_utils.is_main_process()
    log_every = max(1, settings.total_steps // 20)
    for step in range(state.start + 1, settings.total_steps + 1):
        record = _outer_step(state, step, step_fn, settings)
        last = step == settings.total_steps
        if validating and (step % settings.val_every == 0 or last):
            assert val_fn is not None
            record.update(val_fn(prompt.detach()))
        state.history.append(record)
        state.consider(record, prompt, settings)
        if step % settings.checkpoint_every == 0 and not last and main:
            _save(state, step, ckpt_dir, settings)
        _report_step(record, step, last, log_every, settings, progress)
    return _final_prompt(state, settings)


@dataclass
class _LoopState:
    """What :func:`train_prompt` carries from step to step (and a checkpoint restores)."""

    prompt: torch.nn.Parameter
    optimizer: torch.optim.Optimizer
    base_lrs: list[float]  # the configured outer rates, read before any resume
    history: list[dict[str, Any]] = field(default_factory=list)
    start: int = 0  # the last step completed before this process started
    best: Tensor | None = None
    best_step: int = -1

    def consider(self, record: dict[str, Any], current: Tensor, settings: LoopSettings) -> None:
        """Keep ``current`` when ``keep_best`` is on and its finite ``settings.select_on`` is
        lower than the kept step's."""
        value = record.get(settings.select_on)
        if not settings.keep_best or value is None or not math.isfinite(float(value)):
            return
        held = next((h for h in self.history if h["step"] == self.best_step), None)
        if self.best is None or held is None or float(value) < float(held[settings.select_on]):
            self.best, self.best_step = current.detach().clone(), int(record["step"])


def _resume(
    state: _LoopState,
    saved: TrainState,
    restore: Callable[[list[dict[str, Any]]], None] | None,
    settings: LoopSettings,
    ckpt_dir: Path,
) -> None:
    """Load a checkpoint into ``state``: prompt, optimiser, history, step and best prompt."""
    prompt = state.prompt
    with torch.no_grad():
        prompt.copy_(saved.prompt.to(prompt.device, prompt.dtype))
    state.optimizer.load_state_dict(saved.optimizer)
    state.history = [dict(h) for h in saved.history]
    state.start = saved.step
    if restore is not None:
        restore(state.history)
    if saved.best is not None:
        state.best, state.best_step = saved.best.to(prompt.device, prompt.dtype), saved.best_step
    log.info(
        "%s: resuming from step %d of %d (%s)",
        settings.name,
        state.start,
        settings.total_steps,
        ckpt_dir,
    )


def _outer_step(
    state: _LoopState, step: int, step_fn: StepFn, settings: LoopSettings
) -> dict[str, Any]:
    """Step ``t``'s update ``theta <- Opt(theta, clip(g))`` at rate ``lr * lr_factor(t)``, with
    ``g`` from ``step_fn``; returns the step's record (its metrics, ``grad_norm``, ``outer_lr``)."""
    prompt, optimizer = state.prompt, state.optimizer
    grad, metrics = step_fn(step, prompt.detach())
    grad, norm = clip_gradient(grad, settings.clip_grad_norm)
    factor = lr_factor(
        step, settings.total_steps, settings.warmup_steps, settings.final_lr_fraction
    )
    for group, base_lr in zip(optimizer.param_groups, state.base_lrs, strict=True):
        group["lr"] = base_lr * factor
    optimizer.zero_grad(set_to_none=True)
    prompt.grad = grad.to(prompt.device, prompt.dtype)
    optimizer.step()
    record: dict[str, Any] = {"step": step, **metrics, "grad_norm": norm}
    if factor != 1.0:
        record["outer_lr"] = state.base_lrs[0] * factor
    return record


def _save(state: _LoopState, step: int, ckpt_dir: Path, settings: LoopSettings) -> None:
    """Checkpoint ``state`` as of step ``step`` (rank 0 only calls this)."""
    save_checkpoint(
        ckpt_dir,
        TrainState(
            step,
            state.prompt.detach(),
            state.optimizer.state_dict(),
            state.history,
            settings.fingerprint,
            state.best,
            state.best_step,
        ),
    )


def _report_step(
    record: dict[str, Any],
    step: int,
    last: bool,
    log_every: int,
    settings: LoopSettings,
    progress: Progress | None,
) -> None:
    """Log a step's float metrics (every ``log_every`` steps, the last and validated ones) and
    pass them to ``progress``."""
    message = " ".join(
        f"{k} {v:.4f}" for k, v in record.items() if k != "step" and isinstance(v, float)
    )
    if step % log_every == 0 or last or settings.select_on in record:
        log.info("%s step %d/%d %s", settings.name, step, settings.total_steps, message)
    if progress is not None:
        progress(step, settings.total_steps, f"{settings.name} step {step}: {message}")


def _final_prompt(state: _LoopState, settings: LoopSettings) -> tuple[Tensor, list[dict[str, Any]]]:
    """The prompt to return (the kept one under ``keep_best``, its step marked ``kept``) and
    the history."""
    if settings.keep_best and state.best is not None:
        for record in state.history:
            if record["step"] == state.best_step:
                record["kept"] = 1
        log.info(
            "%s: keeping the prompt of step %d (best %s)",
            settings.name,
            state.best_step,
            settings.select_on,
        )
        return state.best.detach().clone(), state.history
    return state.prompt.detach().clone(), state.history


def summarise(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Final figures of a run: the last step's values, the first validation, the kept step."""
    metrics: dict[str, Any] = {"steps": max((int(h["step"]) for h in history), default=0)}
    metrics["examples_seen"] = int(sum(h.get("examples", 0) for h in history))
    for record in history:
        for key, value in record.items():
            if key not in ("step", "examples", "kept"):
                metrics[f"final_{key}"] = value
    first_val = next((h for h in history if "val_loss" in h), None)
    if first_val is not None:
        metrics["initial_val_loss"] = first_val["val_loss"]
        metrics["initial_val_acc"] = first_val["val_acc"]
    kept = next((h for h in history if h.get("kept")), None)
    if kept is not None:
        metrics["kept_step"] = int(kept["step"])
    return metrics


def write_prompt_artifact(
    out_dir: Path,
    prompt: Tensor,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    model: Any = None,
) -> ArtifactRef:
    """Write the prompt folder (prompt + ``history.json``, and ``peft/``: the prompt as a peft
    prompt-tuning adapter when ``model`` is a real backbone) in one atomic rename."""
    from metapt_core.assets import portable_name
    from metapt_core.prompt import export_peft, save_prompt

    with atomic_path(out_dir) as tmp:
        save_prompt(tmp, prompt, meta)
        atomic_write_json(tmp / "history.json", history)
        if model is not None and hasattr(model, "kind") and hasattr(model, "model"):
            named = str(meta.get("backbone") or getattr(model, "name", "") or "")
            base = portable_name(named) or str(getattr(model.model.config, "_name_or_path", ""))
            export_peft(prompt, model, base, tmp / "peft")
    return ArtifactRef.of(out_dir)


def finish(
    out_dir: Path,
    ckpt_dir: Path,
    prompt: Tensor,
    meta: dict[str, Any],
    history: list[dict[str, Any]],
    started: float,
    model: Any = None,
) -> PretrainResult:
    """Rank 0 writes the artifact and drops the checkpoints; every rank returns the result.

    ``meta["warnings"]`` (collapse warnings) is logged and carried into the metrics.
    """
    for warning in meta.get("warnings", []):
        log.warning("%s: %s", meta.get("made_by", "pretrain"), warning)
    if dist_utils.is_main_process():
        write_prompt_artifact(out_dir, prompt, meta, history, model)
        remove_checkpoints(ckpt_dir)
    dist_utils.barrier()
    metrics = summarise(history)
    metrics["seconds"] = time.perf_counter() - started
    metrics["warnings"] = len(meta.get("warnings", []))
    if "inner_lr" in meta:
        metrics["inner_lr"] = meta["inner_lr"]
    return PretrainResult(ref=ArtifactRef.of(out_dir), metrics=metrics, history=history)
