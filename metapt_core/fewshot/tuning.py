"""Few-shot prompt tuning of several prompts at once, and their evaluation.

The backbone is frozen, so a batch may carry a different prompt on every row: M prompts that
train on the same task share one forward and one backward pass. Each prompt draws its own
minibatches from its own seeded generator and the loss is the sum over prompts of each
prompt's mean loss, so the gradient of prompt m is exactly the gradient it would get alone;
Adam is element-wise, so its state does not couple the prompts either. Prompt m's trajectory is
therefore the same whether it trains alone or batched with others (up to float rounding).
Each prompt's own minibatch loss is recorded every step (its training curve).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from metapt_core.config import FewShotConfig
from metapt_core.errors import DataError
from metapt_core.fewshot.metrics import classification_metrics
from metapt_core.inner_sgd import step_size
from metapt_core.specs import FewShotTuning


class Batch(Protocol):
    """What the tuner needs of an encoded batch (``metapt_core.lm.EncodedBatch``)."""

    @property
    def labels(self) -> Tensor | None: ...

    def __len__(self) -> int: ...

    def select(self, indices: Any) -> Any: ...


class PromptScorer(Protocol):
    """What the tuner needs of a model (``metapt_core.lm.PromptModel``)."""

    def class_scores(self, prompt: Tensor, batch: Any) -> Tensor: ...

    def loss(self, prompt: Tensor, batch: Any) -> Tensor: ...


class MinibatchSampler:
    """Epoch-wise shuffled minibatches of row indices from one seeded generator.

    Args:
        n_rows: rows to draw from.
        batch_size: rows per minibatch (at most ``n_rows``).
        seed: the generator's seed.
    """

    def __init__(self, n_rows: int, batch_size: int, seed: int) -> None:
        self.n_rows = n_rows
        self.batch_size = min(batch_size, n_rows)
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def next(self) -> Tensor:
        """The next minibatch: LongTensor[batch_size] of distinct row indices."""
        if self._pos + self.batch_size > len(self._order):
            # A new epoch: rows left over from the last one are dropped so that every minibatch
            # holds distinct rows and has the same size (equal group sizes keep the loss sum exact).
            self._order = torch.randperm(self.n_rows, generator=self.generator)
            self._pos = 0
        out = self._order[self._pos : self._pos + self.batch_size]
        self._pos += self.batch_size
        return out


@dataclass
class TuneHistory:
    """What happened while tuning M prompts.

    Attributes:
        train_loss: per step, the mean over prompts of each prompt's minibatch loss.
        prompt_loss: per prompt, per step, that prompt's own minibatch loss ``[M][steps]``.
        dev: per prompt, a list of ``(step, accuracy, macro_f1)`` dev evaluations.
        best_step: per prompt, the step whose prompt was kept (the last step without a dev set).
        best_dev: per prompt, the kept prompt's dev metrics (None without a dev set).
    """

    train_loss: list[float] = field(default_factory=list)
    prompt_loss: list[list[float]] = field(default_factory=list)
    dev: list[list[tuple[int, float, float]]] = field(default_factory=list)
    best_step: list[int] = field(default_factory=list)
    best_dev: list[dict[str, float] | None] = field(default_factory=list)

    def for_prompt(self, m: int) -> dict[str, Any]:
        """Plain data of prompt m's part of the history (``train_loss``: its own curve)."""
        return {
            "train_loss": list(self.prompt_loss[m]) if self.prompt_loss else list(self.train_loss),
            "dev": [list(t) for t in self.dev[m]] if self.dev else [],
            "best_step": self.best_step[m],
            "best_dev": self.best_dev[m],
        }


def tune_prompts(
    model: PromptScorer,
    init_prompts: Tensor,
    train_batch: Batch,
    cfg: FewShotConfig | FewShotTuning,
    train_seeds: int | Sequence[int],
    dev_batch: Batch | None = None,
    max_step_ratio: float = 0.0,
) -> tuple[Tensor, TuneHistory]:
    """Tune M soft prompts on one task for ``cfg.steps`` optimiser steps, in one batched pass.

    Each step, prompt m draws ``b = min(cfg.batch_size, N)`` rows with its own generator; the
    M minibatches are concatenated into one batch of M*b rows with a prompt per row, and

        L = sum_m (1/b) sum_{i in batch_m} CE(scores(p_m, x_i), y_i) = M * mean over all rows,

    so dL/dp_m is prompt m's own mean-loss gradient. The optimiser (``cfg.optimizer``: Adam, or
    plain SGD ``p <- p - lr * dL/dp``, the update of MetaPT's inner loop) is element-wise, so the
    prompts stay uncoupled. With SGD and ``max_step_ratio`` r > 0 each prompt's step is MetaPT's
    inner step with its trust region, ``p_m <- p_m - min(lr, r ||p_m|| / ||g_m||) g_m``
    (:func:`metapt_core.inner_sgd.step_size`). With a dev set, every ``cfg.eval_every``
    steps and at the last step each prompt is scored on it and the best (accuracy, then
    macro-F1; earliest on ties) is kept.

    Args:
        model: a frozen prompt model (``loss``/``class_scores`` accept ``[P, d]`` or ``[B, P, d]``).
        init_prompts: starting prompts, [M, P, d].
        train_batch: the encoded few-shot training rows (N rows).
        cfg: the few-shot settings (steps, batch_size, lr, optimizer, eval_every,
            eval_batch_size).
        train_seeds: one seed for all prompts, or one per prompt (length M).
        dev_batch: encoded dev rows for model selection, or None.
        max_step_ratio: r of the SGD step's trust region (0: off; ignored with Adam).

    Returns:
        ``(trained [M, P, d], history)``; trained prompts are detached float tensors.
    """
    samplers = _samplers(init_prompts, len(train_batch), cfg.batch_size, train_seeds)
    n_prompts = len(samplers)
    owner = torch.arange(n_prompts).repeat_interleave(samplers[0].batch_size)
    prompts = init_prompts.detach().clone().float().requires_grad_(True)
    optimizer: torch.optim.Optimizer
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD([prompts], lr=cfg.lr)
    else:
        optimizer = torch.optim.Adam([prompts], lr=cfg.lr)
    history = TuneHistory(
        prompt_loss=[[] for _ in range(n_prompts)],
        dev=[[] for _ in range(n_prompts)],
        best_step=[cfg.steps] * n_prompts,
        best_dev=[None] * n_prompts,
    )
    selection = _DevSelection(prompts.detach().clone(), [(-math.inf, -math.inf)] * n_prompts)
    for step in range(1, cfg.steps + 1):
        indices = torch.cat([sampler.next() for sampler in samplers])
        loss, own = _minibatch_loss(model, prompts, train_batch.select(indices), owner)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optimizer == "sgd" and max_step_ratio > 0:
            _cap_sgd_steps(prompts, cfg.lr, max_step_ratio)
        optimizer.step()
        history.train_loss.append(sum(own) / n_prompts)
        for m, value in enumerate(own):
            history.prompt_loss[m].append(value)
        if dev_batch is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            selection.update(model, prompts.detach(), dev_batch, cfg.eval_batch_size, step, history)
    trained = selection.best if dev_batch is not None else prompts.detach().clone()
    return trained, history


def _samplers(
    init_prompts: Tensor, n_rows: int, batch_size: int, train_seeds: int | Sequence[int]
) -> list[MinibatchSampler]:
    """One minibatch sampler per prompt of ``init_prompts`` ``[M, P, d]``, each with its seed."""
    if init_prompts.dim() != 3:
        raise ValueError(f"init_prompts must be [M, P, d], got shape {tuple(init_prompts.shape)}")
    n_prompts = init_prompts.shape[0]
    seeds = [train_seeds] * n_prompts if isinstance(train_seeds, int) else list(train_seeds)
    if len(seeds) != n_prompts:
        raise ValueError(f"got {len(seeds)} train seeds for {n_prompts} prompts")
    return [MinibatchSampler(n_rows, batch_size, seed) for seed in seeds]


def _minibatch_loss(
    model: PromptScorer, prompts: Tensor, batch: Batch, owner: Tensor
) -> tuple[Tensor, list[float]]:
    """The loss to differentiate, ``sum_m`` of prompt m's mean loss on its rows of ``batch``,
    and each prompt's own mean loss (prompts ``[M, P, d]``, owner ``LongTensor[M*b]``)."""
    if len(prompts) == 1:
        # One prompt: the shared-prompt path, which a causal backbone can run faster.
        loss = model.loss(prompts[0], batch)
        return loss, [float(loss.detach())]
    # Rows are grouped by prompt: a model that takes [M, P, d] runs each prompt once.
    grouped = getattr(model, "accepts_grouped_prompts", False)
    return _grouped_loss(model, prompts if grouped else prompts[owner], batch, prompts, owner)


@torch.no_grad()
def _cap_sgd_steps(prompts: Tensor, lr: float, max_step_ratio: float) -> None:
    """Rescale each prompt's gradient so that SGD at ``lr`` moves prompt m by
    ``step_size(g_m) * g_m``: MetaPT's inner step with its trust region."""
    assert prompts.grad is not None
    size = step_size(prompts.grad, prompts, lr, max_step_ratio)
    prompts.grad.mul_(size.to(prompts.grad.dtype) / lr)


@dataclass
class _DevSelection:
    """Each prompt's best dev-scored version so far: ``best`` ``[M, P, d]`` and its
    ``(accuracy, macro_f1)`` key."""

    best: Tensor
    best_key: list[tuple[float, float]]

    def update(
        self,
        model: PromptScorer,
        current: Tensor,
        dev_batch: Batch,
        batch_size: int,
        step: int,
        history: TuneHistory,
    ) -> None:
        """Score ``current`` ``[M, P, d]`` on the dev rows, record it and keep each prompt that
        beats its best key (earliest on ties)."""
        for m, scores in enumerate(evaluate_many(model, current, dev_batch, batch_size)):
            history.dev[m].append((step, scores["accuracy"], scores["macro_f1"]))
            key = (scores["accuracy"], scores["macro_f1"])
            if key > self.best_key[m]:
                self.best_key[m] = key
                self.best[m] = current[m]
                history.best_step[m] = step
                history.best_dev[m] = scores


def _grouped_loss(
    model: PromptScorer, prompt_arg: Tensor, batch: Batch, prompts: Tensor, owner: Tensor
) -> tuple[Tensor, list[float]]:
    """The loss ``L = M * mean over all rows`` to differentiate and each prompt's own mean loss.

    With a ``row_losses(prompt, batch) -> [B]`` method (``PromptModel``) both come from one pass
    (``rows.mean()`` has ``loss``'s gradient bit for bit); a scorer without it pays one more
    no-grad pass per prompt for the curves.

    Args:
        prompt_arg: what the model takes, ``[M, P, d]`` (grouped) or ``[M*b, P, d]``.
        prompts: the M prompts ``[M, P, d]``; owner: ``LongTensor[M*b]``, each row's prompt.
    """
    n_prompts = len(prompts)
    row_losses = getattr(model, "row_losses", None)
    if row_losses is not None:
        rows = row_losses(prompt_arg, batch)
        own = rows.detach().view(n_prompts, -1).mean(dim=1)
        return rows.mean() * n_prompts, [float(v) for v in own]
    loss = model.loss(prompt_arg, batch) * n_prompts
    with torch.no_grad():
        own_losses = [
            float(model.loss(prompts[m], batch.select(torch.nonzero(owner == m).view(-1))))
            for m in range(n_prompts)
        ]
    return loss, own_losses


@torch.no_grad()
def predict_many(model: PromptScorer, prompts: Tensor, batch: Batch, batch_size: int) -> np.ndarray:
    """Predicted class ids of every row behind each of M prompts.

    A model with ``score_many`` (``PromptModel``) evaluates the M prompts together, each
    prompt's keys and values once, in length-sorted chunks; others prompt by prompt.

    Args:
        prompts: [M, P, d].

    Returns:
        int64 array [M, B].
    """
    score_many = getattr(model, "score_many", None)
    if score_many is not None:
        if len(batch) == 0:
            return np.zeros((len(prompts), 0), dtype=np.int64)
        return score_many(prompts, batch, batch_size).argmax(dim=-1).cpu().numpy()
    return np.stack([predict(model, p, batch, batch_size) for p in prompts])


def evaluate_many(
    model: PromptScorer, prompts: Tensor, batch: Batch, batch_size: int
) -> list[dict[str, float]]:
    """:func:`evaluate` of each of M prompts ``[M, P, d]`` on the same rows, in one grouped pass."""
    if batch.labels is None:
        raise DataError("labels", None, "evaluation needs labelled rows")
    gold = batch.labels.cpu().numpy()
    return [
        classification_metrics(gold, preds)
        for preds in predict_many(model, prompts, batch, batch_size)
    ]


@torch.no_grad()
def predict(model: PromptScorer, prompt: Tensor, batch: Batch, batch_size: int) -> np.ndarray:
    """Predicted class ids of every row of ``batch``, in chunks of ``batch_size`` rows.

    Args:
        prompt: [P, d] (P may be 0: no prompt).

    Returns:
        int64 array [B] of ``argmax_c class_scores``.
    """
    preds: list[np.ndarray] = []
    for start in range(0, len(batch), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(batch)))
        scores = model.class_scores(prompt, batch.select(idx))
        preds.append(scores.argmax(dim=-1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)


def evaluate(
    model: PromptScorer, prompt: Tensor, batch: Batch, batch_size: int
) -> dict[str, float]:
    """Accuracy and macro-F1 of ``prompt`` on every row of ``batch``.

    Args:
        prompt: [P, d].
        batch: encoded rows with gold ``labels`` [B].
        batch_size: rows per forward pass.

    Returns:
        ``{"accuracy", "macro_f1", "n"}``.
    """
    return evaluate_many(model, prompt.unsqueeze(0), batch, batch_size)[0]
