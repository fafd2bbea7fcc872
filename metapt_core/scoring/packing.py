"""Packed sequences for a causal LM: each prompt once, its rows after it, no padding between.

Rows are grouped by prompt: group g holds prompt ``p_g`` (``P`` vectors) and rows
``R_g = {g*r, ..., (g+1)*r - 1}``. Group g becomes one sequence

    [ p_g | x_{g*r} | x_{g*r+1} | ... ]           (length P + sum_{b in R_g} len_b)

and the sequences are right-padded to the longest one. A group longer than a token budget is
split into several sequences, each behind its own copy of the prompt (the same tensor, so its
gradient is the sum over copies, as it is over rows). Token i may attend to token j iff

    j <= i  and  ( j < P  or  row(i) = row(j) )                                   (block mask)

so a row sees its prompt and itself, causally, exactly as in ``[p_g | x_b]`` alone, and its
position ids restart after the prompt (``P, P+1, ...``), so rotary or absolute positions are
those of the unpacked sequence. Padding tokens see only the prompt and themselves (never a
fully masked row, whose softmax would be NaN) and nothing real attends to them.

Why a 4-D mask through the attention interface: transformers 5 takes a prepared 4-D mask as
given for every attention implementation (``masking_utils._preprocess_mask_arguments``), SDPA
takes a boolean mask on CPU and CUDA (the fused CPU flash kernel and CUDA's memory-efficient
kernel both accept one; the math kernel, the one with a double backward, too), and it needs no
extra package. Varlen flash attention (packed ``position_ids`` with ``flash_attention_2``) would
skip the masked blocks on CUDA, but it needs the ``flash-attn`` package, cannot take the shared
prompt prefix (its segments are disjoint) and has no double backward for MAML; FlexAttention's
block masks need ``torch.compile`` to be fast. The price of the dense mask is attention over
the whole packed length, which is why evaluation packs rows in chunks of a bounded token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PackedLayout:
    """Where every real token of a batch sits in the packed sequences.

    Attributes:
        token_ids: ``[S, T]`` text token ids of the packed rows (``pad_id`` after each
            sequence's last row). Sequence s is ``[prompt (P) | token_ids[s] (T)]``.
        position_ids: ``[S, P + T]`` positions: ``0..P-1`` for the prompt, ``P + k`` for the
            k-th token of each row.
        allowed: ``[S, P + T, P + T]`` boolean block mask (True: may attend).
        row_group: ``[B]`` the sequence of each row.
        row_start: ``[B]`` index in ``token_ids`` of each row's first token.
        prompt_len: ``P``.
        sequence_prompt: ``[S]`` the prompt (group) in front of each sequence.
    """

    token_ids: Tensor
    position_ids: Tensor
    allowed: Tensor
    row_group: Tensor
    row_start: Tensor
    prompt_len: int
    sequence_prompt: Tensor

    def text_index(self, positions: Tensor) -> Tensor:
        """Indices into the packed text (``token_ids``) of row-relative positions ``[B, K]``."""
        return self.row_start.unsqueeze(1) + positions

    @property
    def real_tokens(self) -> int:
        """Number of real (non-padding) slots, prompt included, over all groups."""
        return int((self.position_ids >= 0).sum())


def pack_rows(
    input_ids: Tensor,
    lengths: Tensor,
    groups: int,
    prompt_len: int,
    pad_id: int = 0,
    max_tokens: int | None = None,
) -> PackedLayout:
    """The packed layout of ``B`` right-padded rows in ``groups`` contiguous groups.

    Args:
        input_ids: ``[B, L]`` token ids, right-padded.
        lengths: ``[B]`` real tokens per row (each >= 1).
        groups: G; ``B`` must be a multiple of it (rows ``g*B/G .. (g+1)*B/G - 1`` form group g).
        prompt_len: P (0: no prompt).
        pad_id: the token id written into padding slots.
        max_tokens: split a group into several sequences (each with its own copy of the
            prompt) of at most this many text tokens (a longer row is a sequence alone), which
            bounds the dense mask's quadratic attention cost. None: one sequence per group.

    Returns:
        :class:`PackedLayout`; padding slots have position id -1 (set to 0 before use by
        :func:`model_position_ids`).
    """
    bsz, width = input_ids.shape
    if groups <= 0 or bsz % groups:
        raise ValueError(f"{bsz} rows do not split into {groups} groups")
    device = input_ids.device
    per_group = bsz // groups
    lengths = lengths.to(device=device, dtype=torch.long)
    # Assign rows (in order) to sequences: a new one at each group start or when full.
    row_seq_list: list[int] = []
    row_start_list: list[int] = []
    seq_prompt_list: list[int] = []
    used = 0
    for b, n in enumerate(lengths.tolist()):
        fresh = b % per_group == 0 or (max_tokens is not None and used + n > max_tokens)
        if fresh:
            seq_prompt_list.append(b // per_group)
            used = 0
        row_seq_list.append(len(seq_prompt_list) - 1)
        row_start_list.append(used)
        used += n
    row_seq = torch.tensor(row_seq_list, dtype=torch.long, device=device)
    row_start = torch.tensor(row_start_list, dtype=torch.long, device=device)
    sequence_prompt = torch.tensor(seq_prompt_list, dtype=torch.long, device=device)
    n_seq = len(seq_prompt_list)
    text_width = int((row_start + lengths).max()) if bsz else 0

    cols = torch.arange(width, device=device)
    valid = cols.unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]
    dest_row = row_seq.unsqueeze(1).expand(-1, width)[valid]
    dest_col = (row_start.unsqueeze(1) + cols.unsqueeze(0))[valid]
    token_ids = torch.full((n_seq, text_width), pad_id, dtype=input_ids.dtype, device=device)
    token_ids[dest_row, dest_col] = input_ids[valid]
    # Segment of each text slot: its row, or a unique negative id for padding.
    segment = -2 - torch.arange(text_width, device=device).unsqueeze(0).repeat(n_seq, 1)
    rows = torch.arange(bsz, device=device).unsqueeze(1).expand(-1, width)
    segment[dest_row, dest_col] = rows[valid]
    text_pos = torch.full((n_seq, text_width), -1, dtype=torch.long, device=device)
    text_pos[dest_row, dest_col] = prompt_len + cols.unsqueeze(0).expand(bsz, -1)[valid]

    prompt_pos = torch.arange(prompt_len, device=device).unsqueeze(0).expand(n_seq, -1)
    position_ids = torch.cat([prompt_pos, text_pos], dim=1)
    full = prompt_len + text_width
    prompt_seg = torch.full((n_seq, prompt_len), -1, device=device, dtype=torch.long)
    seg = torch.cat([prompt_seg, segment], 1)
    idx = torch.arange(full, device=device)
    causal = idx.unsqueeze(1) >= idx.unsqueeze(0)  # [T, T]: j <= i
    to_prompt = (idx < prompt_len).unsqueeze(0)  # [1, T]: j < P
    same_row = seg.unsqueeze(2) == seg.unsqueeze(1)  # [S, T, T]
    allowed = causal.unsqueeze(0) & (to_prompt.unsqueeze(0) | same_row)
    return PackedLayout(
        token_ids, position_ids, allowed, row_seq, row_start, prompt_len, sequence_prompt
    )


def model_position_ids(layout: PackedLayout) -> Tensor:
    """``[G, P + T]`` position ids with padding slots at 0 (their outputs are never read)."""
    return layout.position_ids.clamp_min(0)


def attention_mask(allowed: Tensor, implementation: str, dtype: torch.dtype) -> Tensor:
    """A boolean ``[G, Tq, Tk]`` block mask as the ``[G, 1, Tq, Tk]`` mask the attention
    implementation expects: boolean for SDPA (True: may attend); for every other implementation
    (``eager`` adds the mask to the scores) an additive float mask, 0 where allowed and the
    dtype's minimum elsewhere."""
    mask = allowed.unsqueeze(1)
    if implementation == "sdpa":
        return mask
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)
