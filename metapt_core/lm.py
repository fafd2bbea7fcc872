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

For a causal LM with one prompt shared by the batch, the prompt's keys and values do not depend
on the text, so they are computed once (batch 1) and expanded over the batch; the text then runs
with position ids starting after the prompt. Scores are identical to concatenating the prompt
with each row; gradients flow through the cache. An encoder (T5) attends bidirectionally, so
there the prompt is always concatenated.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.backbone import Backbone, load_backbone
from metapt_core.config import BackboneKind, LossKind, PipelineConfig, ScoringConfig, ScoringMode
from metapt_core.errors import ConfigError

SENTINEL = "<extra_id_0>"


@dataclass(frozen=True)
class TaskFormat:
    """How a task's rows become LM inputs: a template with ``{text}`` and ``{answer}``, and one
    label word per class (index = class id)."""

    template: str
    verbalizer: tuple[str, ...]
    name: str = "task"

    @classmethod
    def of(cls, template: str, verbalizer: Sequence[str], name: str = "task") -> TaskFormat:
        return cls(template=template, verbalizer=tuple(verbalizer), name=name)


@dataclass
class EncodedBatch:
    """Tokenised rows of one task.

    Attributes:
        input_ids: ``[B, L]`` text tokens (right-padded): for a causal LM the template up to the
            answer; for seq2seq the encoder input with the answer replaced by a sentinel.
        attention_mask: ``[B, L]``, 1 on real tokens.
        labels: ``[B]`` gold class ids, or None.
        label_tokens: per class, the label word's token ids.
        decoder_prefix: seq2seq only: decoder tokens before the label word.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    label_tokens: tuple[tuple[int, ...], ...]
    decoder_prefix: tuple[int, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> Tensor:
        """``[B]`` number of real tokens per row."""
        return self.attention_mask.sum(dim=1)

    def select(self, indices: Sequence[int] | Tensor) -> EncodedBatch:
        """Rows ``indices`` (in that order), trimmed to their longest row."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.input_ids.device)
        mask = self.attention_mask.index_select(0, idx)
        width = int(mask.sum(dim=1).max().item()) if len(idx) else 0
        return replace(
            self,
            input_ids=self.input_ids.index_select(0, idx)[:, :width],
            attention_mask=mask[:, :width],
            labels=None if self.labels is None else self.labels.index_select(0, idx),
        )

    def to(self, device: torch.device | str) -> EncodedBatch:
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
        )

    def chunks(self, size: int) -> Iterator[EncodedBatch]:
        """Consecutive sub-batches of at most ``size`` rows."""
        for start in range(0, len(self), size):
            yield self.select(range(start, min(start + size, len(self))))


class PromptModel:
    """A frozen backbone that scores classes behind a soft prompt.

    ``accepts_grouped_prompts``: ``class_scores``/``loss`` take ``[M, P, d]`` prompts for a batch
    whose rows are grouped by prompt (several prompts trained in one pass).

    Args:
        backbone: the loaded, frozen model and tokenizer.
        scoring: scoring mode, loss, prompt cache and maximum text length.
        autocast_bf16: run the backbone under bf16 autocast, on CUDA and on a CPU with native
            bf16 matmuls (AVX512-BF16 or AMX; see :func:`native_bf16`); elsewhere it stays fp32.
    """

    accepts_grouped_prompts = True

    def __init__(
        self, backbone: Backbone, scoring: ScoringConfig | None = None, autocast_bf16: bool = False
    ) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.kind = backbone.kind
        self.scoring = scoring or ScoringConfig()
        self.autocast_bf16 = autocast_bf16 and native_bf16(backbone.device)
        self._embed: torch.nn.Module = self.model.get_input_embeddings()
        self._head: torch.nn.Module = self.model.get_output_embeddings()
        self._restricted_head_ok = (
            self.kind is BackboneKind.CAUSAL and self._check_restricted_head()
        )
        # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
        params = inspect.signature(self.model.base_model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

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
        return cast(Tensor, self._embed.weight)

    @property
    def name(self) -> str:
        return self.backbone.name

    # ---------------------------------------------------------------- encoding

    def label_tokens(self, fmt: TaskFormat) -> tuple[tuple[int, ...], ...]:
        """Token ids of each label word, as the model would see it after the template."""
        prefix = fmt.template.split("{answer}", 1)[0]
        space = " " if self.kind is BackboneKind.CAUSAL and prefix.endswith(" ") else ""
        out: list[tuple[int, ...]] = []
        for word in fmt.verbalizer:
            ids = self.tokenizer(space + word, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ConfigError(
                    f"tasks[{fmt.name}].verbalizer", word, "label word tokenises to nothing"
                )
            out.append(tuple(int(i) for i in ids))
        if self.scoring.mode is ScoringMode.FIRST_TOKEN:
            firsts = [ids[0] for ids in out]
            if len(set(firsts)) != len(firsts):
                raise ConfigError(
                    f"tasks[{fmt.name}].verbalizer",
                    list(fmt.verbalizer),
                    "two label words share their first token; use scoring.mode=sequence",
                )
        return tuple(out)

    def _render(self, text: str, fmt: TaskFormat) -> str:
        if self.kind is BackboneKind.CAUSAL:
            before = fmt.template.split("{answer}", 1)[0]
            if "{text}" not in before:
                raise ConfigError(
                    f"tasks[{fmt.name}].template",
                    fmt.template,
                    "a causal LM needs {text} before {answer}",
                )
            return before.rstrip(" ").replace("{text}", text)
        sentinel = SENTINEL if SENTINEL in self.tokenizer.get_vocab() else ""
        return fmt.template.replace("{answer}", sentinel).replace("{text}", text)

    def encode(
        self, texts: Sequence[str], labels: Sequence[int] | None, fmt: TaskFormat
    ) -> EncodedBatch:
        """Tokenise ``texts`` with the task's template; keep at most ``scoring.max_length`` tokens
        per row, cutting from the left of the text (the template's cue at the end survives)."""
        limit = self.scoring.max_length
        rows = self.tokenizer([self._render(t, fmt) for t in texts], add_special_tokens=True)[
            "input_ids"
        ]
        bos = self.tokenizer.bos_token_id
        cut: list[list[int]] = []
        for ids in rows:
            if len(ids) > limit:
                keep_bos = bos is not None and ids[0] == bos
                ids = ([bos] if keep_bos else []) + ids[len(ids) - limit + int(keep_bos) :]
            cut.append(ids)
        width = max((len(r) for r in cut), default=0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(cut), width), pad, dtype=torch.long)
        mask = torch.zeros((len(cut), width), dtype=torch.long)
        for i, ids in enumerate(cut):
            if not ids:
                raise ConfigError("text", texts[i], "renders to no tokens")
            input_ids[i, : len(ids)] = torch.tensor(ids)
            mask[i, : len(ids)] = 1
        label_tensor = None
        if labels is not None:
            label_tensor = torch.as_tensor(list(labels), dtype=torch.long)
            if len(label_tensor) and (
                label_tensor.min() < 0 or label_tensor.max() >= len(fmt.verbalizer)
            ):
                raise ConfigError(
                    "labels",
                    sorted(set(label_tensor.tolist())),
                    f"outside 0..{len(fmt.verbalizer) - 1}",
                )
        prefix: tuple[int, ...] = ()
        if self.kind is BackboneKind.SEQ2SEQ:
            start = self.model.config.decoder_start_token_id
            prefix = (int(start if start is not None else pad),)
            if SENTINEL in self.tokenizer.get_vocab():
                prefix += (int(self.tokenizer.convert_tokens_to_ids(SENTINEL)),)
        return EncodedBatch(
            input_ids=input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            labels=None if label_tensor is None else label_tensor.to(self.device),
            label_tokens=self.label_tokens(fmt),
            decoder_prefix=prefix,
        )

    # ---------------------------------------------------------------- scoring

    def class_scores(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """Class scores ``[B, C]`` (float32) of ``batch`` behind ``prompt``.

        Args:
            prompt: ``[P, d]`` shared by every row; ``[B, P, d]`` one prompt per row; or
                ``[M, P, d]`` with ``B = M * r`` and rows grouped by prompt (rows ``m*r`` to
                ``(m+1)*r - 1`` use prompt m). ``P`` may be 0 (no prompt: zero-shot). A causal
                backbone computes each distinct prompt's keys and values once.
            batch: encoded rows.
        """
        with self._autocast():
            if self.scoring.mode is ScoringMode.SEQUENCE:
                return self._sequence_scores(prompt, batch).float()
            first = torch.tensor([ids[0] for ids in batch.label_tokens], device=self.device)
            return self._first_token_logits(prompt, batch, first).float()

    def loss(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """Mean cross-entropy of the gold class (scalar), differentiable in ``prompt``."""
        if batch.labels is None:
            raise ConfigError("labels", None, "a loss needs labelled rows")
        if self.scoring.loss is LossKind.LM:
            with self._autocast():
                if self.scoring.mode is ScoringMode.SEQUENCE:
                    gold = self._sequence_scores(prompt, batch, only_gold=True).float()
                    return -gold.mean()
                logits = self._first_token_logits(prompt, batch, None).float()  # [B, V]
            first = torch.tensor([ids[0] for ids in batch.label_tokens], device=self.device)
            return F.cross_entropy(logits, first[batch.labels])
        return F.cross_entropy(self.class_scores(prompt, batch), batch.labels)

    @torch.no_grad()
    def predict(self, prompt: Tensor, batch: EncodedBatch, batch_size: int = 32) -> Tensor:
        """Predicted class ids ``[B]`` (evaluation, no gradient, in chunks)."""
        preds = [
            self.class_scores(prompt, chunk).argmax(dim=-1) for chunk in batch.chunks(batch_size)
        ]
        return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=self.device)

    @contextlib.contextmanager
    def second_order(self) -> Iterator[None]:
        """Context for double backward (MAML): the fused SDPA kernels have no second derivative,
        so attention runs on the math kernel inside it."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            yield

    # ---------------------------------------------------------------- internals

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.autocast_bf16:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @staticmethod
    def _groups(prompt: Tensor, batch_size: int) -> int:
        """Rows per prompt: B for a shared ``[P, d]`` prompt, B/M for grouped ``[M, P, d]``."""
        if prompt.dim() == 2:
            return batch_size
        if prompt.dim() != 3 or prompt.shape[0] == 0 or batch_size % prompt.shape[0] != 0:
            raise ValueError(
                f"prompt of shape {tuple(prompt.shape)} does not fit a batch of {batch_size}"
            )
        return batch_size // int(prompt.shape[0])

    def _prompt_rows(self, prompt: Tensor, batch_size: int) -> Tensor:
        """``[B, P, d]`` rows of a shared ``[P, d]``, grouped ``[M, P, d]`` or per-row prompt."""
        per_prompt = self._groups(prompt, batch_size)
        if prompt.dim() == 2:
            return prompt.unsqueeze(0).expand(batch_size, -1, -1)
        return prompt if per_prompt == 1 else prompt.repeat_interleave(per_prompt, dim=0)

    def _check_prompt(self, prompt: Tensor) -> Tensor:
        if prompt.shape[-1] != self.embed_dim:
            raise ConfigError(
                "prompt.dim", int(prompt.shape[-1]), f"backbone embedding width is {self.embed_dim}"
            )
        return prompt.to(device=self.device, dtype=self.embedding_matrix.dtype)

    def _causal_hidden(
        self, prompt: Tensor, input_ids: Tensor, attention_mask: Tensor
    ) -> tuple[Tensor, int]:
        """Final hidden states ``[B, L, H]`` of the text tokens, and the prompt length P.

        Position ``i`` of the returned states is text token ``i`` (the prompt's states are not
        returned), so the answer position of row b is ``lengths[b] - 1``.
        """
        prompt = self._check_prompt(prompt)
        base = self.model.base_model
        bsz, width = input_ids.shape
        text = self._embed(input_ids)
        plen = int(prompt.shape[-2])
        if plen == 0:
            out = base(inputs_embeds=text, attention_mask=attention_mask, use_cache=False)
            return out.last_hidden_state, 0
        ones = torch.ones((bsz, plen), dtype=attention_mask.dtype, device=attention_mask.device)
        full_mask = torch.cat([ones, attention_mask], dim=1)
        per_prompt = self._groups(prompt, bsz)
        if self.scoring.prompt_cache and per_prompt > 1:
            distinct = prompt.unsqueeze(0) if prompt.dim() == 2 else prompt
            positions = (
                torch.arange(plen, device=self.device).unsqueeze(0).expand(distinct.shape[0], -1)
            )
            first = base(inputs_embeds=distinct, position_ids=positions, use_cache=True)
            cache = getattr(first, "cache", None) or first.past_key_values
            cache.batch_repeat_interleave(per_prompt)
            text_positions = (
                (plen + torch.arange(width, device=self.device)).unsqueeze(0).expand(bsz, -1)
            )
            out = base(
                inputs_embeds=text,
                attention_mask=full_mask,
                position_ids=text_positions,
                use_cache=False,
                **{self._cache_kw: cache},
            )
            return out.last_hidden_state, plen
        embeds = torch.cat([self._prompt_rows(prompt, bsz), text], dim=1)
        out = base(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False)
        return out.last_hidden_state[:, plen:], plen

    def _head_logits(self, hidden: Tensor, token_ids: Tensor | None) -> Tensor:
        """Output-layer logits of ``hidden`` ``[..., H]`` for ``token_ids`` ``[C]`` (None: all)."""
        head_weight = cast(Tensor, self._head.weight)
        weight = head_weight if token_ids is None else head_weight.index_select(0, token_ids)
        logits = hidden @ weight.T
        bias = getattr(self._head, "bias", None)
        if bias is not None:
            logits = logits + (bias if token_ids is None else bias.index_select(0, token_ids))
        return logits

    def _seq2seq_logits(
        self, prompt: Tensor, batch: EncodedBatch, decoder_ids: Tensor, encoder_out=None
    ):  # type: ignore[no-untyped-def]
        """Decoder logits ``[B, K, V]`` for ``decoder_ids`` ``[B, K]``; also the encoder output."""
        prompt = self._check_prompt(prompt)
        bsz = len(batch)
        plen = int(prompt.shape[-2])
        ones = torch.ones((bsz, plen), dtype=batch.attention_mask.dtype, device=self.device)
        mask = torch.cat([ones, batch.attention_mask], dim=1)
        if encoder_out is None:
            embeds = torch.cat(
                [self._prompt_rows(prompt, bsz), self._embed(batch.input_ids)], dim=1
            )
            encoder_out = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        out = self.model(
            encoder_outputs=encoder_out,
            attention_mask=mask,
            decoder_input_ids=decoder_ids,
            use_cache=False,
        )
        return out.logits, encoder_out

    def _first_token_logits(
        self, prompt: Tensor, batch: EncodedBatch, token_ids: Tensor | None
    ) -> Tensor:
        """Logits ``[B, C]`` of ``token_ids`` at the answer position (``[B, V]`` if None)."""
        if self.kind is BackboneKind.SEQ2SEQ:
            prefix = (
                torch.tensor(batch.decoder_prefix, device=self.device)
                .unsqueeze(0)
                .expand(len(batch), -1)
            )
            logits, _ = self._seq2seq_logits(prompt, batch, prefix)
            last = logits[:, -1]
            return last if token_ids is None else last.index_select(1, token_ids)
        if not self._restricted_head_ok:
            return self._full_model_answer_logits(prompt, batch, token_ids)
        hidden, _ = self._causal_hidden(prompt, batch.input_ids, batch.attention_mask)
        rows = torch.arange(len(batch), device=self.device)
        answer = hidden[rows, batch.lengths - 1]
        return self._head_logits(answer, token_ids)

    def _full_model_answer_logits(
        self, prompt: Tensor, batch: EncodedBatch, token_ids: Tensor | None
    ) -> Tensor:
        """Fallback for heads that are not a plain linear layer (e.g. logit soft-capping)."""
        prompt = self._check_prompt(prompt)
        bsz = len(batch)
        plen = int(prompt.shape[-2])
        embeds = torch.cat([self._prompt_rows(prompt, bsz), self._embed(batch.input_ids)], dim=1)
        ones = torch.ones((bsz, plen), dtype=batch.attention_mask.dtype, device=self.device)
        mask = torch.cat([ones, batch.attention_mask], dim=1)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        rows = torch.arange(bsz, device=self.device)
        answer = logits[rows, plen + batch.lengths - 1]
        return answer if token_ids is None else answer.index_select(1, token_ids)

    def _sequence_scores(
        self, prompt: Tensor, batch: EncodedBatch, only_gold: bool = False
    ) -> Tensor:
        """``[B, C]`` summed log-probabilities of each class's label tokens (``[B]`` if only_gold)."""
        bsz = len(batch)
        classes = range(len(batch.label_tokens))
        scores = torch.zeros((bsz, len(batch.label_tokens)), device=self.device)
        if self.kind is BackboneKind.SEQ2SEQ:
            encoder_out = None
            for c in classes:
                tokens = batch.label_tokens[c]
                dec = (
                    torch.tensor(batch.decoder_prefix + tokens[:-1], device=self.device)
                    .unsqueeze(0)
                    .expand(bsz, -1)
                )
                logits, encoder_out = self._seq2seq_logits(prompt, batch, dec, encoder_out)
                k = len(batch.decoder_prefix)
                logp = logits[:, k - 1 : k - 1 + len(tokens)].float().log_softmax(-1)
                target = torch.tensor(tokens, device=self.device)
                scores[:, c] = (
                    logp.gather(2, target.view(1, -1, 1).expand(bsz, -1, 1)).squeeze(-1).sum(-1)
                )
        else:
            lengths = batch.lengths
            for c in classes:
                tokens = batch.label_tokens[c]
                extra = len(tokens) - 1
                ids = F.pad(batch.input_ids, (0, extra), value=int(batch.input_ids[0, 0]))
                mask = F.pad(batch.attention_mask, (0, extra))
                if extra:
                    cont = torch.tensor(tokens[:-1], device=self.device)
                    for b in range(bsz):
                        n = int(lengths[b])
                        ids[b, n : n + extra] = cont
                        mask[b, n : n + extra] = 1
                hidden, _ = self._causal_hidden(prompt, ids, mask)
                pos = (lengths - 1).unsqueeze(1) + torch.arange(
                    len(tokens), device=self.device
                ).unsqueeze(0)
                states = hidden.gather(1, pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
                if self._restricted_head_ok:
                    logp = self._head_logits(states, None).float().log_softmax(-1)
                else:
                    raise ConfigError(
                        "scoring.mode",
                        "sequence",
                        "is not supported for this backbone's output layer",
                    )
                target = torch.tensor(tokens, device=self.device)
                scores[:, c] = (
                    logp.gather(2, target.view(1, -1, 1).expand(bsz, -1, 1)).squeeze(-1).sum(-1)
                )
        if only_gold:
            assert batch.labels is not None
            return scores.gather(1, batch.labels.view(-1, 1)).squeeze(1)
        return scores

    @torch.no_grad()
    def _check_restricted_head(self) -> bool:
        """True if ``base_model`` + the output layer's rows reproduce the model's own logits.

        Probed once on a short input; backbones whose head does more than a linear map fall back
        to computing full logits.
        """
        ids = self.tokenizer("a short probe sentence", return_tensors="pt")["input_ids"].to(
            self.device
        )
        try:
            ref = self.model(input_ids=ids, use_cache=False).logits[0, -1].float()
            hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state[0, -1]
            ours = self._head_logits(hidden, None).float()
        except (AttributeError, TypeError, RuntimeError):
            return False
        scale = ref.abs().max().clamp_min(1.0)
        return bool(((ours - ref).abs().max() / scale) < 1e-3)


def native_bf16(device: torch.device) -> bool:
    """True where bf16 autocast is fast: CUDA, or a CPU whose oneDNN has native bf16 kernels
    (AVX512-BF16 or AMX). On other CPUs bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def load_prompt_model(cfg: PipelineConfig) -> PromptModel:
    """The frozen backbone of ``cfg`` (loaded once per process) wrapped for scoring."""
    backbone = load_backbone(cfg.backbone, cfg.assets_path)
    return PromptModel(backbone, cfg.scoring, autocast_bf16=cfg.backbone.autocast_bf16)
