"""Class scores of a frozen encoder-decoder LM (T5, Flan-T5) behind soft prompts.

The prompt is put in front of the encoder's input embeddings: ``[p | x_b]``. The encoder
attends bidirectionally, so the prompt's states depend on the row and cannot be cached or
shared between rows; rows are padded per batch. Evaluation removes most of the padding by
length-sorted chunks (:meth:`EncodedBatch.sorted_chunks`). Packing rows into one encoder
sequence with a block-diagonal mask would repeat the prompt for every row anyway and make
attention quadratic in the packed length, so it does not pay here.

First-token mode: ``s_c = log-softmax-free logit of v(c)_1`` at the decoder position after
``decoder_prefix`` (the decoder start token and the sentinel); sequence mode sums the label
tokens' log-probabilities under teacher forcing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metapt_core.scoring.causal import label_log_prob, prompt_groups
from metapt_core.scoring.encoding import EncodedBatch


class Seq2SeqScorer:
    """Decoder logits of a frozen seq2seq LM behind soft prompts.

    Args:
        model: a ``...ForConditionalGeneration`` (frozen).
    """

    packed = False
    restricted_head = False

    def __init__(self, model: Any) -> None:
        self.model = model
        self.embed: torch.nn.Module = model.get_input_embeddings()
        self.device = self.embed.weight.device
        self.fallbacks: list[str] = []

    def logits(
        self, prompt: Tensor, batch: EncodedBatch, decoder_ids: Tensor, encoder_out: Any = None
    ) -> tuple[Tensor, Any]:
        """Decoder logits ``[B, K, V]`` for ``decoder_ids`` ``[B, K]``; also the encoder output
        (pass it back to reuse it for another decoder input)."""
        bsz = len(batch)
        prompts = prompt_groups(prompt, bsz)
        per_prompt = bsz // int(prompts.shape[0])
        plen = int(prompts.shape[1])
        mask = torch.cat([batch.attention_mask.new_ones((bsz, plen)), batch.attention_mask], 1)
        if encoder_out is None:
            text = self.embed(batch.input_ids)
            rows = prompts.to(text.dtype).repeat_interleave(per_prompt, dim=0)
            embeds = torch.cat([rows, text], dim=1)
            encoder_out = self.model.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        out = self.model(
            encoder_outputs=encoder_out,
            attention_mask=mask,
            decoder_input_ids=decoder_ids,
            use_cache=False,
        )
        return out.logits, encoder_out

    def answer_logits(
        self, prompt: Tensor, batch: EncodedBatch, token_ids: Tensor | None
    ) -> Tensor:
        """Logits ``[B, C]`` of ``token_ids`` after the decoder prefix (``[B, V]`` if None)."""
        prefix = torch.tensor(batch.decoder_prefix, device=self.device).expand(len(batch), -1)
        logits, _ = self.logits(prompt, batch, prefix)
        last = logits[:, -1]
        return last if token_ids is None else last.index_select(1, token_ids)

    def sequence_scores(self, prompt: Tensor, batch: EncodedBatch) -> Tensor:
        """``[B, C]`` summed log-probabilities of each class's label tokens."""
        bsz = len(batch)
        encoder_out = None
        columns = []
        k = len(batch.decoder_prefix)
        for tokens in batch.label_tokens:
            dec = torch.tensor(batch.decoder_prefix + tokens[:-1], device=self.device)
            logits, encoder_out = self.logits(prompt, batch, dec.expand(bsz, -1), encoder_out)
            logp = logits[:, k - 1 : k - 1 + len(tokens)].float().log_softmax(-1)
            columns.append(label_log_prob(logp, tokens))
        return torch.stack(columns, dim=1)

    @torch.no_grad()
    def score_many(
        self,
        prompts: Tensor,
        batch: EncodedBatch,
        token_ids: Tensor,
        max_rows: int,
        max_tokens: int,
    ) -> Tensor:
        """First-token scores ``[M, B, C]`` behind each of M prompts, in length-sorted chunks."""
        out = torch.empty((int(prompts.shape[0]), len(batch), len(token_ids)), device=self.device)
        for idx, chunk in batch.sorted_chunks(max_rows, max_tokens):
            # All M prompts in one grouped call: rows repeated once per prompt.
            rows = chunk.select(torch.arange(len(chunk)).repeat(int(prompts.shape[0])))
            scores = self.answer_logits(prompts, rows, token_ids).float()
            out[:, idx.to(self.device)] = scores.view(int(prompts.shape[0]), len(chunk), -1)
        return out
