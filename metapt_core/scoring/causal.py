"""Class scores of a decoder-only LM behind soft prompts, in packed passes.

Training and gradient passes put each distinct prompt once in front of its rows
(:mod:`metapt_core.scoring.packing`). Evaluation (:meth:`CausalScorer.score_many`, no gradient)
runs the M prompts once, keeps their keys and values, and then runs length-sorted chunks of
packed rows against that cache; every prompt sees the same chunk, so a chunk is one
``[M, T]`` call.

The padded path (each row ``[p | x_b]``, right-padded; a shared prompt's keys and values
computed once and expanded) is kept as the reference that packing is tested against, and as
the path for backbones where packing does not reproduce it (:meth:`CausalScorer.check_packing`).
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, cast

import torch
from torch import Tensor

from metapt_core.config import ScoringConfig
from metapt_core.scoring.encoding import EncodedBatch
from metapt_core.scoring.packing import (
    PackedLayout,
    attention_mask,
    model_position_ids,
    pack_rows,
)

log = logging.getLogger(__name__)


def prompt_groups(prompt: Tensor, batch_size: int) -> Tensor:
    """The distinct prompts ``[G, P, d]`` of a batch: a shared ``[P, d]`` (G = 1), or ``[M, P, d]``
    with rows grouped by prompt (``B = M * r``; M = B is one prompt per row)."""
    if prompt.dim() == 2:
        return prompt.unsqueeze(0)
    if prompt.dim() != 3 or prompt.shape[0] == 0 or batch_size % prompt.shape[0] != 0:
        raise ValueError(
            f"prompt of shape {tuple(prompt.shape)} does not fit a batch of {batch_size}"
        )
    return prompt


def sequence_prompts(prompts: Tensor, layout: PackedLayout) -> Tensor:
    """The prompt ``[S, P, d]`` in front of each of the ``S`` packed sequences.

    ``prompts[layout.sequence_prompt]`` would give the same values, but the backward of advanced
    indexing accumulates repeated indices with parallel atomic adds whose order follows thread
    timing: when several sequences share one prompt, its gradient then differs in the last bits
    from run to run (and more under load). One prompt is expanded (its backward is a sum) and
    several are gathered with ``index_select`` (its CPU backward adds index by index), both in a
    fixed order.
    """
    count = int(layout.sequence_prompt.shape[0])
    if prompts.shape[0] == 1:
        return prompts.expand(count, -1, -1)
    return prompts.index_select(0, layout.sequence_prompt)


def label_log_prob(logp: Tensor, tokens: tuple[int, ...]) -> Tensor:
    """``[B]``: ``sum_j logp[b, j, tokens[j]]`` for ``logp`` ``[B, K, V]`` (K = len(tokens))."""
    bsz = int(logp.shape[0])
    target = torch.tensor(tokens, device=logp.device).view(1, -1, 1).expand(bsz, -1, 1)
    return logp.gather(2, target).squeeze(-1).sum(-1)


class CausalScorer:
    """Hidden states and label-word logits of a frozen causal LM behind soft prompts.

    Args:
        model: a ``...ForCausalLM`` (frozen).
        scoring: ``packing`` and ``prompt_cache`` choose the paths; see :class:`ScoringConfig`.
        probe_ids: ``[1, n]`` token ids of a short text for the start-up checks.
        low_precision: the model runs under bf16 autocast (looser start-up tolerances).

    Attributes:
        packed: whether gradient passes are packed (the setting, and the check passed).
        restricted_head: whether the base model's last state times the output layer's rows
            reproduces the model's logits (else scores come from the full model, padded).
        fallbacks: one line per path that could not be used, for logs and run tags.
    """

    def __init__(
        self, model: Any, scoring: ScoringConfig, probe_ids: Tensor, low_precision: bool = False
    ) -> None:
        self.model = model
        self.base = model.base_model
        self.scoring = scoring
        self.embed: torch.nn.Module = model.get_input_embeddings()
        self.head: torch.nn.Module = model.get_output_embeddings()
        self.device = self.embed.weight.device
        self.implementation = str(getattr(model.config, "_attn_implementation", "eager") or "eager")
        # transformers 5.x renamed the forward argument ``past_key_values`` to ``cache``.
        params = inspect.signature(self.base.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        pad = getattr(model.config, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else 0
        self.fallbacks: list[str] = []
        self.low_precision = low_precision
        self.restricted_head = self.check_restricted_head(probe_ids)
        if not self.restricted_head:
            self.fallback(
                "restricted head: base model + output rows differ from the model's logits; "
                "scoring with the full model, padded, without the prompt cache or packing"
            )
        self.packed = bool(scoring.packing) and self.restricted_head
        if self.packed and not self.check_packing(probe_ids):
            self.packed = False
            self.fallback("packing: packed states differ from padded ones; using padded batches")

    def fallback(self, message: str) -> None:
        """Record and log a path that could not be used (never silent)."""
        self.fallbacks.append(message)
        log.warning("scoring fallback for %s: %s", type(self.model).__name__, message)

    @property
    def tolerance(self) -> float:
        """Relative tolerance of the start-up checks in the weights' dtype."""
        dtype = self.embed.weight.dtype
        full = dtype in (torch.float32, torch.float64) and not self.low_precision
        return 1e-3 if full else 3e-2

    # ------------------------------------------------------------------ hidden states

    def states(self, prompt: Tensor, input_ids: Tensor, mask: Tensor, read: Tensor) -> Tensor:
        """Final hidden states at text positions ``read`` of each row.

        Args:
            prompt: ``[P, d]`` shared, or ``[M, P, d]`` grouped (rows ``m*r .. (m+1)*r - 1``).
            input_ids: ``[B, L]`` right-padded rows; mask: ``[B, L]``.
            read: ``[B, K]`` text positions (0-based, within each row) to return.

        Returns:
            ``[B, K, H]``.
        """
        if self.packed:
            return self.packed_states(prompt, input_ids, mask, read)
        return self.padded_states(prompt, input_ids, mask, read)

    def packed_states(
        self, prompt: Tensor, input_ids: Tensor, mask: Tensor, read: Tensor
    ) -> Tensor:
        """:meth:`states` through one packed pass (:mod:`~metapt_core.scoring.packing`)."""
        prompts = prompt_groups(prompt, len(input_ids))
        plen = int(prompts.shape[1])
        layout = pack_rows(
            input_ids,
            mask.sum(1),
            int(prompts.shape[0]),
            plen,
            self.pad_id,
            max_tokens=self.scoring.pack_tokens,
        )
        text = self.embed(layout.token_ids)
        if plen:
            embeds = torch.cat([sequence_prompts(prompts.to(text.dtype), layout), text], dim=1)
        else:
            embeds = text
        out = self.base(
            inputs_embeds=embeds,
            attention_mask=attention_mask(layout.allowed, self.implementation, embeds.dtype),
            position_ids=model_position_ids(layout),
            use_cache=False,
        )
        hidden = out.last_hidden_state  # [S, P + T, H]
        index = plen + layout.text_index(read)  # [B, K]
        return hidden[layout.row_group.unsqueeze(1), index]

    def padded_states(
        self, prompt: Tensor, input_ids: Tensor, mask: Tensor, read: Tensor
    ) -> Tensor:
        """:meth:`states` with each row as its own padded sequence ``[p | x_b]`` (reference)."""
        prompts = prompt_groups(prompt, len(input_ids))
        bsz, width = input_ids.shape
        per_prompt = bsz // int(prompts.shape[0])
        plen = int(prompts.shape[1])
        text = self.embed(input_ids)
        rows = torch.arange(bsz, device=input_ids.device).unsqueeze(1)
        if plen == 0:
            out = self.base(inputs_embeds=text, attention_mask=mask, use_cache=False)
            return out.last_hidden_state[rows, read]
        prompts = prompts.to(text.dtype)
        full_mask = torch.cat([mask.new_ones((bsz, plen)), mask], dim=1)
        if self.scoring.prompt_cache and per_prompt > 1:
            positions = torch.arange(plen, device=self.device).expand(prompts.shape[0], -1)
            first = self.base(inputs_embeds=prompts, position_ids=positions, use_cache=True)
            cache = getattr(first, "cache", None) or first.past_key_values
            cache.batch_repeat_interleave(per_prompt)
            text_positions = (plen + torch.arange(width, device=self.device)).expand(bsz, -1)
            out = self.base(
                inputs_embeds=text,
                attention_mask=full_mask,
                position_ids=text_positions,
                use_cache=False,
                **{self.cache_kw: cache},
            )
            return out.last_hidden_state[rows, read]
        embeds = torch.cat([prompts.repeat_interleave(per_prompt, dim=0), text], dim=1)
        out = self.base(inputs_embeds=embeds, attention_mask=full_mask, use_cache=False)
        return out.last_hidden_state[rows, plen + read]

    # ------------------------------------------------------------------ logits

    def head_logits(self, hidden: Tensor, token_ids: Tensor | None) -> Tensor:
        """Output-layer logits of ``hidden`` ``[..., H]`` for ``token_ids`` ``[C]`` (None: all)."""
        head_weight = cast(Tensor, self.head.weight)
        weight = head_weight if token_ids is None else head_weight.index_select(0, token_ids)
        logits = hidden @ weight.T
        bias = getattr(self.head, "bias", None)
        if bias is not None:
            logits = logits + (bias if token_ids is None else bias.index_select(0, token_ids))
        return logits

    def answer_logits(
        self, prompt: Tensor, batch: EncodedBatch, token_ids: Tensor | None
    ) -> Tensor:
        """Logits ``[B, C]`` of ``token_ids`` at the answer position (``[B, V]`` if None):
        ``s = h_ans . W[token_ids]`` (+ bias)."""
        if not self.restricted_head:
            return self.full_model_answer_logits(prompt, batch, token_ids)
        read = (batch.lengths - 1).unsqueeze(1)
        answer = self.states(prompt, batch.input_ids, batch.attention_mask, read)[:, 0]
        return self.head_logits(answer, token_ids)

    def full_model_answer_logits(
        self, prompt: Tensor, batch: EncodedBatch, token_ids: Tensor | None
    ) -> Tensor:
        """Logits from the whole model over padded ``[p | x_b]`` rows, for output layers that
        are not a plain linear map (e.g. logit soft-capping)."""
        bsz = len(batch)
        prompts = prompt_groups(prompt, bsz)
        per_prompt = bsz // int(prompts.shape[0])
        plen = int(prompts.shape[1])
        text = self.embed(batch.input_ids)
        embeds = torch.cat([prompts.to(text.dtype).repeat_interleave(per_prompt, 0), text], 1)
        mask = torch.cat([batch.attention_mask.new_ones((bsz, plen)), batch.attention_mask], 1)
        logits = self.model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        rows = torch.arange(bsz, device=self.device)
        answer = logits[rows, plen + batch.lengths - 1]
        return answer if token_ids is None else answer.index_select(1, token_ids)

    def sequence_scores(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """``[B, C]``: ``s_c = sum_j log p(v(c)_j | x, v(c)_<j)`` over each label word's tokens."""
        if not self.restricted_head:
            from metapt_core.errors import ConfigError

            raise ConfigError(
                "scoring.mode", "sequence", "is not supported for this backbone's output layer"
            )
        bsz = len(batch)
        lengths = batch.lengths
        columns = []
        for tokens in batch.label_tokens:
            extra = len(tokens) - 1
            ids = torch.nn.functional.pad(batch.input_ids, (0, extra), value=self.pad_id)
            mask = torch.nn.functional.pad(batch.attention_mask, (0, extra))
            if extra:
                cont = torch.tensor(tokens[:-1], device=self.device)
                cols = lengths.unsqueeze(1) + torch.arange(extra, device=self.device)
                rows = torch.arange(bsz, device=self.device).unsqueeze(1).expand(-1, extra)
                ids[rows, cols] = cont.expand(bsz, -1)
                mask[rows, cols] = 1
            read = (lengths - 1).unsqueeze(1) + torch.arange(len(tokens), device=self.device)
            states = self.states(prompt, ids, mask, read)  # [B, K, H]
            logp = self.head_logits(states, None).float().log_softmax(-1)
            columns.append(label_log_prob(logp, tokens))
        return torch.stack(columns, dim=1)

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def score_many(
        self,
        prompts: Tensor,
        batch: EncodedBatch,
        token_ids: Tensor,
        max_rows: int,
        max_tokens: int,
    ) -> Tensor:
        """First-token scores ``[M, B, C]`` of every row behind each of M prompts (no gradient).

        The prompts' keys and values are computed once (``[M, P]`` tokens); length-sorted chunks
        of at most ``max_rows`` rows and about ``max_tokens`` tokens then run packed against
        them, one ``[M, T]`` call per chunk, with the block mask restricted to the chunk's
        queries (``[M, 1, T, P + T]``).
        """
        n_prompts, plen = int(prompts.shape[0]), int(prompts.shape[1])
        out = torch.empty((n_prompts, len(batch), len(token_ids)), device=self.device)
        if not (self.packed and self.scoring.prompt_cache and plen):
            for m in range(n_prompts):
                for idx, chunk in batch.sorted_chunks(max_rows, max_tokens):
                    out[m, idx.to(self.device)] = self.answer_logits(
                        prompts[m], chunk, token_ids
                    ).float()
            return out
        positions = torch.arange(plen, device=self.device).expand(n_prompts, -1)
        first = self.base(
            inputs_embeds=prompts.to(cast(Tensor, self.embed.weight).dtype),
            position_ids=positions,
            use_cache=True,
        )
        cache = getattr(first, "cache", None) or first.past_key_values
        for idx, chunk in batch.sorted_chunks(max_rows, max_tokens):
            layout = pack_rows(chunk.input_ids, chunk.lengths, 1, plen, self.pad_id)
            text = self.embed(layout.token_ids).expand(n_prompts, -1, -1)
            allowed = layout.allowed[:, plen:, :].expand(n_prompts, -1, -1)
            hidden = self.base(
                inputs_embeds=text,
                attention_mask=attention_mask(allowed, self.implementation, text.dtype),
                position_ids=model_position_ids(layout)[:, plen:].expand(n_prompts, -1),
                use_cache=False,
                **{self.cache_kw: cache},
            ).last_hidden_state  # [M, T, H]
            cache.crop(-int(layout.token_ids.shape[1]))
            answer = hidden[:, layout.text_index((chunk.lengths - 1).unsqueeze(1))[:, 0]]
            out[:, idx.to(self.device)] = self.head_logits(answer, token_ids).float()
        return out

    # ------------------------------------------------------------------ start-up checks

    @torch.no_grad()
    def check_restricted_head(self, probe_ids: Tensor) -> bool:
        """True if ``base_model`` + the output layer's rows reproduce the model's own logits
        (relative to their scale, within :attr:`tolerance`)."""
        try:
            ref = self.model(input_ids=probe_ids, use_cache=False).logits[0, -1].float()
            hidden = self.base(input_ids=probe_ids, use_cache=False).last_hidden_state[0, -1]
            ours = self.head_logits(hidden, None).float()
        except (AttributeError, TypeError, RuntimeError):
            return False
        scale = ref.abs().max().clamp_min(1.0)
        return bool(((ours - ref).abs().max() / scale) < self.tolerance)

    @torch.no_grad()
    def check_packing(self, probe_ids: Tensor) -> bool:
        """True if a packed pass reproduces padded rows on this backbone: two rows of different
        lengths behind one prompt, every state compared (models whose positions do not come
        from ``position_ids``, such as ALiBi, fail here)."""
        ids = probe_ids[0]
        n = int(ids.shape[0])
        if n < 2:
            return True
        short = max(1, n // 2)
        input_ids = torch.stack(
            [ids, torch.cat([ids[:short], ids.new_full((n - short,), self.pad_id)])]
        )
        mask = torch.stack(
            [torch.ones_like(ids), (torch.arange(n, device=ids.device) < short).long()]
        )
        prompt = self.embed(ids[:2]).float()
        read = torch.arange(short, device=ids.device).expand(2, -1)
        try:
            packed = self.packed_states(prompt, input_ids, mask, read).float()
        except (TypeError, RuntimeError, ValueError) as exc:
            log.warning("packed pass failed on this backbone: %s", str(exc).splitlines()[0][:160])
            return False
        padded = self.padded_states(prompt, input_ids, mask, read).float()
        scale = padded.abs().max().clamp_min(1.0)
        return bool(((packed - padded).abs().max() / scale) < self.tolerance)
