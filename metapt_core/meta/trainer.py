"""MetaPT meta-pretraining: learn a prompt initialisation over the cluster tasks.

Each outer step draws a meta-batch of tasks (shards), a disjoint support and query batch per
task, computes the meta-gradient of MAML, FOMAML or Reptile (:mod:`metapt_core.meta.maml`)
and takes one step of the outer optimiser. The loop machinery here (:func:`train_prompt`:
validation, atomic checkpoints, exact resume, data parallelism, the final prompt folder) is
shared with the PPT baseline (:mod:`metapt_core.ppt`).

Example (a notebook, after the cluster stage)::

    from metapt_core.meta import meta_pretrain
    result = meta_pretrain(shards_dir, cfg, MetaAlgorithm.MAML, model, Path("out/metapt_maml"))
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.config import MetaAlgorithm, Optimizer, PipelineConfig, to_dict
from metapt_core.errors import ConfigError
from metapt_core.meta import distributed as dist_utils
from metapt_core.meta.checkpoint import (
    TrainState,
    checkpoint_dir,
    load_checkpoint,
    remove_checkpoints,
    save_checkpoint,
)
from metapt_core.meta.episodes import (
    TRAIN_STREAM,
    EpisodeRows,
    ShardTask,
    load_tasks,
    rng_for,
    sample_meta_batch,
    validation_episodes,
)
from metapt_core.meta.maml import Episode, inner_adapt, meta_gradient_sum
from metapt_core.specs import MetaSpec, PPTSpec
from metapt_core.store import ArtifactRef, atomic_path, atomic_write_json, sha256_file, stable_hash

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
StepFn = Callable[[int, Tensor], tuple[Tensor, dict[str, float]]]
ValFn = Callable[[Tensor], dict[str, float]]


class PromptObjective(Protocol):
    """What the trainers need of a model (:class:`metapt_core.lm.PromptModel` provides it)."""

    @property
    def device(self) -> torch.device: ...

    def encode(self, texts: Sequence[str], labels: Sequence[int] | None, fmt: Any) -> Any: ...

    def class_scores(self, prompt: Tensor, batch: Any) -> Tensor: ...

    def loss(self, prompt: Tensor, batch: Any) -> Tensor: ...


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
    """How :func:`train_prompt` runs: length, periods, and the run's identity for resume."""

    total_steps: int
    val_every: int
    checkpoint_every: int
    fingerprint: str
    name: str = "train"


# ------------------------------------------------------------------------------ data helpers


def shards_path(shards: str | Path | ArtifactRef) -> Path:
    """The shards folder of a path or a (verified) artifact reference."""
    if isinstance(shards, ArtifactRef):
        return Path(shards.verify().path)
    return Path(shards)


def task_format(cfg: MetaSpec | PPTSpec) -> Any:
    """The pool's template and verbalizer as a :class:`metapt_core.lm.TaskFormat`.

    A model that is not a PromptModel (so :mod:`metapt_core.lm` was never imported, e.g. the
    toy model) gets the plain ``(template, verbalizer)`` pair, sparing the transformers import.
    """
    lm = sys.modules.get("metapt_core.lm")
    if lm is None:
        return (cfg.pool.template, tuple(cfg.pool.verbalizer))
    return lm.TaskFormat.of(cfg.pool.template, cfg.pool.verbalizer, name="pool")


class EncodedTasks:
    """Every row of every task tokenised once per stage; episodes select rows from it.

    ``select`` of an encoded batch trims to its longest row, so a selection equals encoding
    those rows afresh (tested), without the tokenizer at every step.
    """

    def __init__(self, model: PromptObjective, tasks: Sequence[ShardTask], fmt: Any) -> None:
        self.batches = [
            model.encode(list(task.texts), [int(y) for y in task.labels], fmt) for task in tasks
        ]
        self.cluster_ids = [task.cluster_id for task in tasks]

    def rows(self, task_index: int, rows: np.ndarray) -> Any:
        """The encoded batch of ``rows`` (indices into task ``task_index``), in that order."""
        return self.batches[task_index].select([int(i) for i in rows])

    def episodes(self, episodes: Sequence[EpisodeRows]) -> list[Episode[Any]]:
        """Sampled row indices as encoded support/query batches."""
        return [
            Episode(
                support=self.rows(e.task_index, e.support),
                query=self.rows(e.task_index, e.query),
                task_id=self.cluster_ids[e.task_index],
            )
            for e in episodes
        ]


def grouped_concat(model: PromptObjective, episodes: Sequence[Episode[Any]]) -> Any:
    """The batch type's ``concat`` when the model scores grouped prompts, else None."""
    if not episodes or not getattr(model, "accepts_grouped_prompts", False):
        return None
    return getattr(type(episodes[0].support), "concat", None)


def make_optimizer(name: Optimizer | str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimiser: ``adam`` or ``sgd``."""
    if name == Optimizer.ADAM:
        return torch.optim.Adam(params, lr=lr)
    if name == Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr)
    raise ConfigError("meta.outer_optimizer", name, "must be adam or sgd")


def evaluate_adapted(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    model: PromptObjective,
    inner_lr: float,
    inner_steps: int,
) -> dict[str, float]:
    """Query loss and accuracy before and after adapting on each episode's support.

    Adaptation is ``inner_steps`` of SGD at ``inner_lr`` (what a meta-learned initialisation is
    for), with no second-order graph. In a process group each rank evaluates its slice and the
    sums are all-reduced.

    Returns:
        ``val_loss``, ``val_acc`` (after adaptation) and ``val_loss_0``, ``val_acc_0`` (before),
        each the mean over query rows of all episodes.
    """
    local = dist_utils.local_slice(list(episodes))
    sums = torch.zeros(5, dtype=torch.float64)
    for episode in local:
        adapted = inner_adapt(
            prompt.detach(), episode.support, model.loss, inner_lr, inner_steps, create_graph=False
        )
        labels = episode.query.labels
        with torch.no_grad():
            for offset, theta in ((0, adapted), (2, prompt)):
                scores = model.class_scores(theta.detach(), episode.query).float()
                sums[offset] += float(F.cross_entropy(scores, labels, reduction="sum"))
                sums[offset + 1] += float((scores.argmax(dim=-1) == labels).sum())
        sums[4] += len(labels)
    _, reduced = dist_utils.reduce_sums(torch.zeros(1), sums.tolist())
    rows = max(reduced[4], 1.0)
    return {
        "val_loss": reduced[0] / rows,
        "val_acc": reduced[1] / rows,
        "val_loss_0": reduced[2] / rows,
        "val_acc_0": reduced[3] / rows,
    }


# ------------------------------------------------------------------------------ the loop


def train_prompt(
    initial: Tensor,
    optimizer_factory: Callable[[list[Tensor]], torch.optim.Optimizer],
    step_fn: StepFn,
    val_fn: ValFn | None,
    settings: LoopSettings,
    ckpt_dir: Path,
    progress: Progress | None = None,
    resume: bool = True,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Optimise a prompt with a given (pseudo-)gradient, checkpointing and validating.

    Step ``t`` (1-based) calls ``step_fn(t, prompt) -> (grad [P, d], metrics)``, sets
    ``prompt.grad = grad`` and steps the optimiser. Every random draw inside ``step_fn`` must
    come from ``t`` (see :func:`metapt_core.meta.episodes.rng_for`): then resuming from a
    checkpoint at step ``s`` replays steps ``s+1..T`` exactly as an uninterrupted run would.

    Args:
        initial: the starting prompt ``Tensor[P, d]`` (on the model's device).
        optimizer_factory: builds the optimiser over ``[prompt]``.
        step_fn: the gradient of one step.
        val_fn: validation metrics of a prompt, or None.
        settings: steps, validation and checkpoint periods, and the run's fingerprint.
        ckpt_dir: the scratch folder for checkpoints (rank 0 writes it).
        progress: ``progress(done, total, message)`` after each step.
        resume: continue from a matching checkpoint in ``ckpt_dir`` if there is one.

    Returns:
        ``(prompt, history)``: the final prompt (detached) and one dict per step (step 0 holds
        the validation of the initial prompt).
    """
    prompt = torch.nn.Parameter(initial.detach().clone())
    optimizer = optimizer_factory([prompt])
    history: list[dict[str, Any]] = []
    start = 0
    state = load_checkpoint(ckpt_dir, settings.fingerprint) if resume else None
    if state is not None:
        with torch.no_grad():
            prompt.copy_(state.prompt.to(prompt.device, prompt.dtype))
        optimizer.load_state_dict(state.optimizer)
        history = [dict(h) for h in state.history]
        start = state.step
        log.info(
            "%s: resuming from step %d of %d (%s)",
            settings.name,
            start,
            settings.total_steps,
            ckpt_dir,
        )
    elif val_fn is not None and settings.val_every > 0:
        history.append({"step": 0, **val_fn(prompt.detach())})
    main = dist_utils.is_main_process()
    log_every = max(1, settings.total_steps // 20)
    for step in range(start + 1, settings.total_steps + 1):
        grad, metrics = step_fn(step, prompt.detach())
        optimizer.zero_grad(set_to_none=True)
        prompt.grad = grad.to(prompt.device, prompt.dtype)
        optimizer.step()
        record: dict[str, Any] = {"step": step, **metrics}
        last = step == settings.total_steps
        if (
            val_fn is not None
            and settings.val_every > 0
            and (step % settings.val_every == 0 or last)
        ):
            record.update(val_fn(prompt.detach()))
        history.append(record)
        if step % settings.checkpoint_every == 0 and not last and main:
            optimizer_state = optimizer.state_dict()
            save_checkpoint(
                ckpt_dir,
                TrainState(step, prompt.detach(), optimizer_state, history, settings.fingerprint),
            )
        message = " ".join(
            f"{k} {v:.4f}" for k, v in record.items() if k != "step" and isinstance(v, float)
        )
        if step % log_every == 0 or last or "val_loss" in record:
            log.info("%s step %d/%d %s", settings.name, step, settings.total_steps, message)
        if progress is not None:
            progress(step, settings.total_steps, f"{settings.name} step {step}: {message}")
    return prompt.detach().clone(), history


def summarise(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Final figures of a run: the last step's losses, the last validation, examples seen."""
    metrics: dict[str, Any] = {"steps": max((int(h["step"]) for h in history), default=0)}
    metrics["examples_seen"] = int(sum(h.get("examples", 0) for h in history))
    for record in history:
        for key, value in record.items():
            if key != "step" and key != "examples":
                metrics[f"final_{key}"] = value
    first_val = next((h for h in history if "val_loss" in h), None)
    if first_val is not None:
        metrics["initial_val_loss"] = first_val["val_loss"]
        metrics["initial_val_acc"] = first_val["val_acc"]
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
    from metapt_core.prompt import export_peft, save_prompt

    with atomic_path(out_dir) as tmp:
        save_prompt(tmp, prompt, meta)
        atomic_write_json(tmp / "history.json", history)
        if model is not None and hasattr(model, "kind") and hasattr(model, "model"):
            base = str(getattr(model.model.config, "_name_or_path", "") or model.name)
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
    """Rank 0 writes the artifact and drops the checkpoints; every rank returns the result."""
    if dist_utils.is_main_process():
        write_prompt_artifact(out_dir, prompt, meta, history, model)
        remove_checkpoints(ckpt_dir)
    dist_utils.barrier()
    metrics = summarise(history)
    metrics["seconds"] = time.perf_counter() - started
    return PretrainResult(ref=ArtifactRef.of(out_dir), metrics=metrics, history=history)


def starting_prompt(
    model: PromptObjective, cfg: MetaSpec | PPTSpec, initial: Tensor | None
) -> Tensor:
    """``initial`` if given, else ``init_prompt(model, cfg.prompt)`` seeded by ``meta.seed``.

    The prompt is float32 (float64 kept for float64 toy models) on the model's device.
    """
    if initial is None:
        from metapt_core.prompt import init_prompt

        generator = torch.Generator().manual_seed(int(cfg.meta.seed))
        initial = init_prompt(model, cfg.prompt, generator)  # type: ignore[arg-type]
    dtype = torch.float64 if initial.dtype == torch.float64 else torch.float32
    return initial.detach().to(device=model.device, dtype=dtype)


def run_fingerprint(kind: str, cfg: MetaSpec | PPTSpec, shards: Path, extra: dict[str, Any]) -> str:
    """Identity of a training run for resume: the stage's spec (less the settings that only
    schedule validation and checkpoints) and the data."""
    spec = to_dict(cfg)
    for key in ("val_every", "val_episodes", "checkpoint_every"):
        spec["meta"].pop(key, None)
    manifest = shards / "manifest.json"
    return stable_hash(
        {
            "kind": kind,
            "spec": spec,
            "shards": sha256_file(manifest) if manifest.is_file() else "",
            **extra,
        }
    )


# ------------------------------------------------------------------------------ MetaPT


def meta_pretrain(
    shards: str | Path | ArtifactRef,
    cfg: MetaSpec | PipelineConfig,
    algorithm: MetaAlgorithm,
    model: PromptObjective,
    out_dir: str | Path,
    progress: Progress | None = None,
    resume: bool = True,
    initial_prompt: Tensor | None = None,
) -> PretrainResult:
    """Meta-learn a prompt initialisation over the shards with MAML, FOMAML or Reptile.

    Outer step ``t``: draw ``meta.meta_batch_size`` tasks and their disjoint support/query
    batches from ``rng(meta.seed, t)``, compute the meta-gradient ``g`` of ``algorithm``
    (:func:`metapt_core.meta.maml.meta_gradient`), and apply ``theta <- Opt(theta, g)`` with
    ``meta.outer_optimizer`` at ``meta.outer_lr``. Every ``meta.val_every`` steps the prompt is
    adapted on held-out validation episodes and scored on their queries.

    Args:
        shards: the cluster stage's shards folder (or its reference).
        cfg: what MetaPT reads (:class:`~metapt_core.specs.MetaSpec`: ``meta``, ``prompt``, the
            pool's format, the model's settings), or a whole config to take it from.
        algorithm: the meta-learner.
        model: the frozen prompt model (never modified).
        out_dir: the prompt folder to write (atomically); checkpoints go to ``<out_dir>.ckpt``.
        progress: ``progress(done, total, message)`` per step.
        resume: continue from a matching checkpoint.
        initial_prompt: a starting ``Tensor[P, d]`` instead of ``init_prompt`` (tests, toys).

    Returns:
        :class:`PretrainResult`; ``history`` has ``query_loss``, ``support_loss`` and
        ``examples`` per step and ``val_*`` at validation steps.
    """
    started = time.perf_counter()
    algorithm = MetaAlgorithm(algorithm)
    cfg = MetaSpec.of(cfg)
    meta = cfg.meta
    out = Path(out_dir)
    root = shards_path(shards)
    episode_rows = meta.support_size + meta.query_size
    tasks = load_tasks(root, cfg.pool.classes, meta.val_fraction, episode_rows, meta.seed)
    val_rows = validation_episodes(
        tasks, meta.val_episodes, meta.support_size, meta.query_size, meta.seed
    )
    encoded = EncodedTasks(model, tasks, task_format(cfg))
    val_set = encoded.episodes(val_rows)

    def step_fn(step: int, prompt: Tensor) -> tuple[Tensor, dict[str, float]]:
        rows = sample_meta_batch(
            tasks,
            meta.meta_batch_size,
            meta.support_size,
            meta.query_size,
            rng_for(meta.seed, TRAIN_STREAM, step),
        )
        episodes = encoded.episodes(dist_utils.local_slice(rows))
        total = meta_gradient_sum(
            prompt,
            episodes,
            model.loss,
            algorithm,
            meta.inner_lr,
            meta.inner_steps,
            meta.reptile_step,
            concat=grouped_concat(model, episodes) if meta.group_tasks else None,
        )
        grad, (query_sum, support_sum, count) = dist_utils.reduce_sums(
            total.grad, [total.query_loss, total.support_loss, total.tasks]
        )
        return grad / count, {
            "query_loss": query_sum / count,
            "support_loss": support_sum / count,
            "examples": float(len(rows) * episode_rows),
        }

    def val_fn(prompt: Tensor) -> dict[str, float]:
        return evaluate_adapted(prompt, val_set, model, meta.inner_lr, meta.inner_steps)

    initial = starting_prompt(model, cfg, initial_prompt)
    settings = LoopSettings(
        total_steps=meta.meta_steps,
        val_every=meta.val_every if val_set else 0,
        checkpoint_every=meta.checkpoint_every,
        fingerprint=run_fingerprint(
            f"metapt-{algorithm.value}", cfg, root, {"initial": tensor_hash(initial)}
        ),
        name=f"metapt-{algorithm.value}",
    )
    ckpt = checkpoint_dir(out)
    log.info(
        "%s: %d tasks, %d validation episodes, %d steps on %s",
        settings.name,
        len(tasks),
        len(val_set),
        meta.meta_steps,
        model.device,
    )
    with frozen_backbone(model):
        prompt, history = train_prompt(
            initial,
            lambda params: make_optimizer(meta.outer_optimizer, params, meta.outer_lr),
            step_fn,
            val_fn,
            settings,
            ckpt,
            progress,
            resume,
        )
    info = {
        "made_by": settings.name,
        "algorithm": algorithm.value,
        "backbone": getattr(model, "name", type(model).__name__),
        "init": cfg.prompt.init.value,
        "tasks": [t.cluster_id for t in tasks],
        "config": {"meta": to_dict(meta), "prompt": to_dict(cfg.prompt)},
    }
    return finish(out, ckpt, prompt, info, history, started, model)


def tensor_hash(tensor: Tensor) -> str:
    """sha256 of a tensor's bytes (the initial prompt is part of a run's identity)."""
    import hashlib

    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def backbone_parameters(model: Any) -> list[Tensor]:
    """The frozen weights behind a prompt model (``model.model`` for a PromptModel)."""
    module = getattr(model, "model", model)
    return list(module.parameters()) if hasattr(module, "parameters") else []


class frozen_backbone:  # noqa: N801 - used as a context manager
    """Assert on exit that no backbone parameter asks for a gradient or received one."""

    def __init__(self, model: PromptObjective) -> None:
        self.params = backbone_parameters(model)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and any(p.requires_grad or p.grad is not None for p in self.params):
            raise RuntimeError(
                "a backbone parameter requires or holds a gradient; it must stay frozen"
            )
