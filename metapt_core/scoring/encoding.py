"""From rows of text to token ids: a task's template, its verbalizer tokens, encoded batches.

:class:`PromptEncoder` needs only a tokenizer, the kind of backbone and the scoring settings, so
preflight checks templates and label words with the very rules the scorers use, without loading
any weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from metapt_core.config import BackboneKind, ScoringConfig, ScoringMode
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

    def sorted_chunks(
        self, max_rows: int, max_tokens: int
    ) -> Iterator[tuple[Tensor, EncodedBatch]]:
        """Length-sorted sub-batches: at most ``max_rows`` rows and about ``max_tokens`` real
        tokens each (a single longer row is its own chunk), with the original row indices.

        Yields:
            ``(indices [b], chunk)``; the chunks' indices together are a permutation of ``0..B-1``.
        """
        lengths = self.lengths.cpu()
        order = torch.sort(lengths, descending=True, stable=True).indices
        start = 0
        while start < len(order):
            end, tokens = start, 0
            while end < len(order) and end - start < max_rows:
                n = int(lengths[order[end]])
                if end > start and tokens + n > max_tokens:
                    break
                tokens += n
                end += 1
            idx = order[start:end]
            yield idx, self.select(idx)
            start = end

    @staticmethod
    def concat(batches: Sequence[EncodedBatch]) -> EncodedBatch:
        """The rows of ``batches`` one after another (same task format), right-padded."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        first = batches[0]
        width = max(int(b.input_ids.shape[1]) for b in batches)
        ids = torch.cat(
            [
                torch.nn.functional.pad(b.input_ids, (0, width - b.input_ids.shape[1]))
                for b in batches
            ]
        )
        mask = torch.cat(
            [
                torch.nn.functional.pad(b.attention_mask, (0, width - b.attention_mask.shape[1]))
                for b in batches
            ]
        )
        labels = None
        if all(b.labels is not None for b in batches):
            labels = torch.cat([b.labels for b in batches if b.labels is not None])
        return replace(first, input_ids=ids, attention_mask=mask, labels=labels)


class PromptEncoder:
    """Renders rows with a task's template and tokenises them for one backbone.

    Args:
        tokenizer: the backbone's tokenizer.
        kind: CAUSAL or SEQ2SEQ.
        scoring: the scoring settings (``mode`` for the label-word check, ``max_length``).
        decoder_start_token_id: seq2seq only, the decoder's first token (pad if None).
        device: where encoded batches are put.
    """

    def __init__(
        self,
        tokenizer: Any,
        kind: BackboneKind,
        scoring: ScoringConfig | None = None,
        decoder_start_token_id: int | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.tokenizer = tokenizer
        self.kind = kind
        self.scoring = scoring or ScoringConfig()
        self.decoder_start_token_id = decoder_start_token_id
        self.device = torch.device(device)

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

    def render(self, text: str, fmt: TaskFormat) -> str:
        """The model input of one row: the template up to the answer (causal), or the whole
        template with the answer replaced by a sentinel (seq2seq)."""
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
        rows = self.tokenizer([self.render(t, fmt) for t in texts], add_special_tokens=True)[
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
            start = self.decoder_start_token_id
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
