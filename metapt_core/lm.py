"""Class scores of a frozen LM behind a soft prompt, computing only what the verbalizer needs.

For a text x rendered with a template and a verbalizer v(c) (one label word per class), a soft
prompt ``theta`` (``P`` vectors of the backbone's embedding width ``d``) is put in front of the
(encoder) input embeddings, and class c is scored at the answer position:

- first-token mode: ``s_c = h_ans . W[v(c)_1]`` (+ bias), the LM's logit of the label word's
  first token, where ``h_ans`` is the final hidden state at the answer position and ``W`` the
  output embedding matrix. Only the C label rows of W are multiplied, never the whole vocabulary.
- sequence mode: ``s_c = sum_j log p(v(c)_j | x, v(c)_<j)``, for label words of several tokens.

Training loss (``LossKind.VERBALIZER``): ``L = -log softmax_c(s)_y``; ``LossKind.LM`` uses the
full-vocabulary log-probability of the gold label word instead.

:class:`PromptModel` joins three parts: a :class:`~metapt_core.scoring.PromptEncoder`
(template, label tokens, ``encode``), and a causal (:class:`~metapt_core.scoring.CausalScorer`,
packed passes and a prompt cache) or a seq2seq scorer (:class:`~metapt_core.scoring.Seq2SeqScorer`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.backbone import Backbone, ProcessCache, load_backbone
from metapt_core.config import (
    BackboneKind,
    LossKind,
    PipelineConfig,
    ScoringConfig,
    ScoringMode,
    to_dict,
)
from metapt_core.errors import ConfigError
from metapt_core.scoring.causal import CausalScorer
from metapt_core.scoring.dtype_probe import Bf16Choice, choose_bf16, linear_shapes
from metapt_core.scoring.encoding import SENTINEL, EncodedBatch, PromptEncoder, TaskFormat
from metapt_core.scoring.precision import autocast_model, native_bf16
from metapt_core.scoring.seq2seq import Seq2SeqScorer
from metapt_core.store import stable_hash

__all__ = [
    "SENTINEL",
    "EncodedBatch",
    "PromptModel",
    "TaskFormat",
    "load_prompt_model",
    "native_bf16",
]

log = logging.getLogger(__name__)


class PromptModel:
    """A frozen backbone that scores classes behind a soft prompt.

    ``accepts_grouped_prompts``: ``class_scores``/``loss`` take ``[M, P, d]`` prompts for a batch
    whose rows are grouped by prompt (several prompts trained in one pass).

    Args:
        backbone: the loaded, frozen model and tokenizer.
        scoring: scoring mode, loss, packing, prompt cache and maximum text length.
        autocast_bf16: run the backbone under bf16 autocast, on CUDA and on a CPU with native
            bf16 matmuls (AVX512-BF16 or AMX; see :func:`native_bf16`), with its linear weights
            cast to bf16 once (:func:`~metapt_core.scoring.precision.autocast_model`);
            elsewhere it stays fp32.
    """

    accepts_grouped_prompts = True

    def __init__(
        self,
        backbone: Backbone,
        scoring: ScoringConfig | None = None,
        autocast_bf16: bool = False,
        bf16_cache: Path | None = None,
    ) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.kind = backbone.kind
        self.scoring = scoring or ScoringConfig()
        self.bf16 = self._choose_bf16(autocast_bf16, bf16_cache)
        self.autocast_bf16 = self.bf16.use
        self.encoder = PromptEncoder(
            self.tokenizer,
            self.kind,
            self.scoring,
            getattr(self.model.config, "decoder_start_token_id", None),
            backbone.device,
        )
        running = autocast_model(self.model) if self.autocast_bf16 else self.model
        self.scorer: CausalScorer | Seq2SeqScorer
        with self._autocast():
            if self.kind is BackboneKind.CAUSAL:
                probe = self.tokenizer("a short probe sentence", return_tensors="pt")["input_ids"]
                self.scorer = CausalScorer(running, self.scoring, probe.to(self.device),
                                           low_precision=self.autocast_bf16)  # fmt: skip
            else:
                self.scorer = Seq2SeqScorer(running)

    def _choose_bf16(self, wanted: bool, cache: Path | None) -> Bf16Choice:
        """Off unless asked; with a probe cache, timed at the backbone's linear shapes
        (:func:`~metapt_core.scoring.dtype_probe.choose_bf16`); without, the CPU flags decide."""
        device = self.backbone.device
        if not wanted:
            return Bf16Choice(False, "config")
        if cache is not None:
            return choose_bf16(device, linear_shapes(self.model), cache)
        native = native_bf16(device)
        return Bf16Choice(native, "cuda" if device.type == "cuda" else "flags")

    # ---------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    @property
    def embed_dim(self) -> int:
        return int(self.embedding_matrix.shape[1])

    @property
    def embedding_matrix(self) -> Tensor:
        """``[V, d]`` input embedding matrix (frozen)."""
        return cast(Tensor, self.model.get_input_embeddings().weight)

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def fallbacks(self) -> list[str]:
        """Scoring paths that could not be used on this backbone (empty when none)."""
        return list(self.scorer.fallbacks)

    @property
    def path(self) -> str:
        """The scoring path that runs, in words (for logs, run tags and benchmarks)."""
        parts = [self.kind.value]
        if self.kind is BackboneKind.CAUSAL:
            parts.append("packed" if self.scorer.packed else "padded")
            parts.append("restricted head" if self.scorer.restricted_head else "full logits")
            if self.scoring.prompt_cache:
                parts.append("prompt cache")
        if self.autocast_bf16:
            parts.append("bf16 autocast, weights cast once")
        parts.append(f"dtype {self.bf16.describe()}")
        return ", ".join(parts)

    # ---------------------------------------------------------------- encoding

    def task_format(self, template: str, verbalizer: Sequence[str], name: str = "") -> TaskFormat:
        """A template and its label words as this model's :class:`TaskFormat`."""
        return TaskFormat.of(template, list(verbalizer), name=name)

    def label_tokens(self, fmt: TaskFormat) -> tuple[tuple[int, ...], ...]:
        """Token ids of each label word, as the model would see it after the template."""
        return self.encoder.label_tokens(fmt)

    def encode(
        self, texts: Sequence[str], labels: Sequence[int] | None, fmt: TaskFormat
    ) -> EncodedBatch:
        """Tokenise ``texts`` (see :meth:`PromptEncoder.encode`)."""
        return self.encoder.encode(texts, labels, fmt)

    # ---------------------------------------------------------------- scoring

    def class_scores(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """Class scores ``[B, C]`` (float32) of ``batch`` behind ``prompt``.

        Args:
            prompt: ``[P, d]`` shared by every row; ``[B, P, d]`` one prompt per row; or
                ``[M, P, d]`` with ``B = M * r`` and rows grouped by prompt (rows ``m*r`` to
                ``(m+1)*r - 1`` use prompt m). ``P`` may be 0 (no prompt: zero-shot). A causal
                backbone runs each distinct prompt once, in front of its rows.
            batch: encoded rows.
        """
        prompt = self._check_prompt(prompt)
        with self._autocast():
            if self.scoring.mode is ScoringMode.SEQUENCE:
                return self.scorer.sequence_scores(prompt, batch).float()
            return self.scorer.answer_logits(prompt, batch, self._first_tokens(batch)).float()

    def loss(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """Mean cross-entropy of the gold class (scalar), differentiable in ``prompt``."""
        return self._loss(prompt, batch, "mean")

    def row_losses(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """Cross-entropy of the gold class of every row, ``[B]``, differentiable in ``prompt``.

        ``row_losses(p, b).mean()`` has the gradient of ``loss(p, b)`` bit for bit (both
        reductions divide by B in the backward pass); the forward value may differ in its last
        bit (another summation order).
        """
        return self._loss(prompt, batch, "none")

    def _loss(self, prompt: Tensor, batch: EncodedBatch, reduction: str) -> Tensor:
        if batch.labels is None:
            raise ConfigError("labels", None, "a loss needs labelled rows")
        if self.scoring.loss is LossKind.LM:
            prompt = self._check_prompt(prompt)
            with self._autocast():
                if self.scoring.mode is ScoringMode.SEQUENCE:
                    scores = self.scorer.sequence_scores(prompt, batch).float()
                    picked = -scores.gather(1, batch.labels.view(-1, 1))
                    return picked.mean() if reduction == "mean" else picked.view(-1)
                logits = self.scorer.answer_logits(prompt, batch, None).float()  # [B, V]
            gold = self._first_tokens(batch)[batch.labels]
            return F.cross_entropy(logits, gold, reduction=reduction)
        return F.cross_entropy(self.class_scores(prompt, batch), batch.labels, reduction=reduction)

    @torch.no_grad()
    def score_many(self, prompts: Tensor, batch: EncodedBatch, batch_size: int = 32) -> Tensor:
        """Class scores ``[M, B, C]`` of every row behind each of ``prompts`` ``[M, P, d]``.

        Evaluation: no gradient; length-sorted chunks of at most ``batch_size`` rows (and about
        ``scoring.pack_tokens`` tokens); on a causal backbone each prompt's keys and values are
        computed once for the whole evaluation and the M prompts share every chunk's call.
        """
        prompts = self._check_prompt(prompts)
        if prompts.dim() == 2:
            prompts = prompts.unsqueeze(0)
        if self.scoring.mode is ScoringMode.SEQUENCE:
            out = torch.empty(
                (len(prompts), len(batch), len(batch.label_tokens)), device=self.device
            )
            for idx, chunk in batch.sorted_chunks(batch_size, self.scoring.pack_tokens):
                for m, prompt in enumerate(prompts):
                    out[m, idx.to(self.device)] = self.class_scores(prompt, chunk)
            return out
        with self._autocast():
            return self.scorer.score_many(
                prompts, batch, self._first_tokens(batch), batch_size, self.scoring.pack_tokens
            )

    @torch.no_grad()
    def predict(self, prompt: Tensor, batch: EncodedBatch, batch_size: int = 32) -> Tensor:
        """Predicted class ids ``[B]`` (evaluation, no gradient, in chunks)."""
        if len(batch) == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        return self.score_many(prompt, batch, batch_size)[0].argmax(dim=-1)

    # ---------------------------------------------------------------- internals

    def _first_tokens(self, batch: EncodedBatch) -> Tensor:
        return torch.tensor([ids[0] for ids in batch.label_tokens], device=self.device)

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _check_prompt(self, prompt: Tensor) -> Tensor:
        if prompt.shape[-1] != self.embed_dim:
            raise ConfigError(
                "prompt.dim", int(prompt.shape[-1]), f"backbone embedding width is {self.embed_dim}"
            )
        return prompt.to(device=self.device, dtype=self.embedding_matrix.dtype)


_MODELS: ProcessCache[PromptModel] = ProcessCache()


def _model_key(cfg: PipelineConfig) -> str:
    """What a prompt model is made from: the backbone, the scoring, the assets and the folder of
    the bf16 probe's record."""
    parts = {"backbone": to_dict(cfg.backbone), "scoring": to_dict(cfg.scoring)}
    return stable_hash({**parts, "assets": str(cfg.assets_path), "work": str(cfg.work_path)})


def load_prompt_model(cfg: PipelineConfig) -> PromptModel:
    """The frozen backbone of ``cfg`` wrapped for scoring, made once per process (the stages
    of a run share it; a fully cached run never makes it)."""

    def make() -> PromptModel:
        model = PromptModel(
            load_backbone(cfg.backbone, cfg.assets_path),
            cfg.scoring,
            autocast_bf16=cfg.backbone.autocast_bf16,
            bf16_cache=cfg.work_path / "probes" / "bf16.json",
        )
        log.info("scoring path: %s", model.path)
        return model

    return _MODELS.get(_model_key(cfg), make)


def loaded_prompt_model(cfg: PipelineConfig) -> PromptModel | None:
    """The prompt model of ``cfg`` if this process made one, else None (nothing is loaded)."""
    return _MODELS.peek(_model_key(cfg))
