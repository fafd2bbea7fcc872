"""Tiny randomly initialised backbones for tests and benchmarks, with no download.

A byte-level BPE (causal) or a unigram-style word-piece vocabulary with T5 sentinels (seq2seq)
is trained on the fly with the ``tokenizers`` package; the model is built from a config and
saved as an ordinary transformers folder, so it is loaded through the same path as any
user-supplied model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

CORPUS = [
    "the movie was good and the actors were great",
    "a terrible film, bad acting and a boring plot",
    "the product works, maybe not great but fine",
    "i love this phone, the screen is great",
    "the battery is bad and the service was terrible",
    "an honest, moving story with good music",
    "it was bad. it was good. it was great. it was terrible. it was maybe fine.",
    "news about sports, business, world and technology",
    "the weather today is cold and the team won the game",
]


def _corpus() -> list[str]:
    words = sorted({w.strip(".,") for line in CORPUS for w in line.split()})
    return CORPUS * 4 + words


def make_tiny_llama(out_dir: str | Path, seed: int = 0, hidden: int = 32, layers: int = 2) -> Path:
    """Save a tiny random LlamaForCausalLM and a byte-level BPE tokenizer to ``out_dir``.

    Returns:
        The folder, loadable with ``AutoModelForCausalLM.from_pretrained``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def make_tiny_t5(out_dir: str | Path, seed: int = 0, d_model: int = 32, layers: int = 2) -> Path:
    """Save a tiny random T5ForConditionalGeneration and a word-level tokenizer with sentinels.

    The tokenizer follows T5's conventions: ``<pad>`` (id 0, also the decoder start token),
    ``</s>`` appended to every input, ``<unk>``, and sentinels ``<extra_id_0>`` ...

    Returns:
        The folder, loadable with ``AutoModelForSeq2SeqLM.from_pretrained``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentinels = [f"<extra_id_{i}>" for i in range(4)]
    tok = Tokenizer(models.WordPiece(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>", *sentinels]
    )
    tok.train_from_iterator(_corpus(), trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=sentinels,
    )
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    config = T5Config(  # type: ignore[call-arg]
        vocab_size=len(fast),
        d_model=d_model,
        d_kv=8,
        d_ff=d_model * 2,
        num_layers=layers,
        num_decoder_layers=layers,
        num_heads=4,
        decoder_start_token_id=fast.pad_token_id,
        pad_token_id=fast.pad_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    T5ForConditionalGeneration(config).save_pretrained(out)
    return out
