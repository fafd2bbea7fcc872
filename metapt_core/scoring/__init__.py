"""Scoring classes behind soft prompts: encoding rows, packed causal passes, seq2seq passes."""

from metapt_core.scoring.causal import CausalScorer, prompt_groups
from metapt_core.scoring.encoding import SENTINEL, EncodedBatch, PromptEncoder, TaskFormat
from metapt_core.scoring.packing import PackedLayout, attention_mask, pack_rows
from metapt_core.scoring.precision import autocast_model, native_bf16
from metapt_core.scoring.seq2seq import Seq2SeqScorer

__all__ = [
    "SENTINEL",
    "CausalScorer",
    "EncodedBatch",
    "PackedLayout",
    "PromptEncoder",
    "Seq2SeqScorer",
    "TaskFormat",
    "attention_mask",
    "autocast_model",
    "native_bf16",
    "pack_rows",
    "prompt_groups",
]
