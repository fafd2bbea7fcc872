"""Soft prompts: initialisation, safetensors storage, and export as a peft adapter.

A prompt is a float32 tensor ``[P, d]``: P virtual tokens of the backbone's embedding width d.
On disk it is a folder with ``prompt.safetensors`` (tensor ``prompt``) and ``prompt.json``
(backbone, length, dim, how it was made).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from metapt_core.config import BackboneKind, PromptConfig, PromptInit
from metapt_core.errors import ConfigError, DataError
from metapt_core.store import atomic_path

if TYPE_CHECKING:
    from metapt_core.lm import PromptModel

PROMPT_FILE = "prompt.safetensors"
META_FILE = "prompt.json"
ADAPTER_FILE = "adapter_model.safetensors"  # peft's prompt-tuning weights
ADAPTER_TENSOR = "prompt_embeddings"
VOCAB_SAMPLE_RANGE = 5000  # Lester et al. 2021 sample from the 5,000 most common tokens


def init_prompt(
    model: PromptModel, cfg: PromptConfig, generator: torch.Generator | None = None
) -> Tensor:
    """A new prompt ``[P, d]`` (float32, on CPU) per ``cfg.init``.

    - RANDOM: ``theta ~ N(0, sigma^2)``, sigma the std of the embedding matrix (so the prompt
      has the scale of real token embeddings).
    - SAMPLE_VOCAB: rows ``E[t_i]`` for P token ids drawn uniformly from the first
      ``min(5000, V)`` non-special ids (BPE vocabularies are roughly frequency-ordered).
    - TEXT: embeddings of ``cfg.init_text``, tiled or cut to P tokens.
    - FILE: a saved prompt (its length and width must match).
    """
    emb = model.embedding_matrix.detach().float().cpu()
    vocab, dim = emb.shape
    length = cfg.length
    if cfg.init is PromptInit.RANDOM:
        return torch.randn((length, dim), generator=generator) * emb.std()
    if cfg.init is PromptInit.SAMPLE_VOCAB:
        special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
        pool = torch.tensor([i for i in range(min(VOCAB_SAMPLE_RANGE, vocab)) if i not in special])
        picks = pool[torch.randint(len(pool), (length,), generator=generator)]
        return emb[picks].clone()
    if cfg.init is PromptInit.TEXT:
        ids = model.tokenizer(cfg.init_text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ConfigError("prompt.init_text", cfg.init_text, "tokenises to nothing")
        reps = math.ceil(length / len(ids))
        return emb[torch.tensor((ids * reps)[:length])].clone()
    prompt, _ = load_prompt(cfg.init_file)
    if tuple(prompt.shape) != (length, dim):
        raise ConfigError(
            "prompt.init_file",
            cfg.init_file,
            f"holds a prompt of shape {tuple(prompt.shape)}, expected {(length, dim)}",
        )
    return prompt


def label_word_prompt(
    model: PromptModel,
    label_tokens: Sequence[Sequence[int]],
    cfg: PromptConfig,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The label-word initialisation of Lester et al. (2021), ``[P, d]`` float32 on CPU.

    Row ``c < C`` is the mean embedding of class c's label-word tokens (as the template places
    them, ``label_tokens[c]``); the remaining ``P - C`` rows are a sampled-vocabulary prompt
    drawn from ``generator``. With ``P < C`` the first P classes' rows are kept.
    """
    emb = model.embedding_matrix.detach().float().cpu()
    rows = [emb[torch.tensor(list(ids))].mean(dim=0) for ids in label_tokens if len(ids)]
    if len(rows) != len(label_tokens):
        raise ConfigError("grid.inits", "label_words", "a label word tokenises to nothing")
    words = torch.stack(rows)[: cfg.length]
    rest = cfg.length - len(words)
    if rest <= 0:
        return words.clone()
    filler_cfg = PromptConfig(length=rest, init=PromptInit.SAMPLE_VOCAB)
    return torch.cat([words, init_prompt(model, filler_cfg, generator)])


def task_description(verbalizer: Sequence[str], description: str = "") -> str:
    """The ``text`` initialisation's text: the task's description, else its label words as a
    question ("bad or good?")."""
    return description or f"{' or '.join(verbalizer)}?"


def save_prompt(folder: str | Path, prompt: Tensor, meta: dict[str, Any]) -> Path:
    """Write ``prompt`` ``[P, d]`` and its metadata to ``folder`` atomically."""
    if prompt.dim() != 2:
        raise ValueError(f"a prompt is [P, d], got shape {tuple(prompt.shape)}")
    info = dict(meta)
    info.update(length=int(prompt.shape[0]), dim=int(prompt.shape[1]), format="metapt-prompt-v1")
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        save_file({"prompt": prompt.detach().float().cpu().contiguous()}, str(tmp / PROMPT_FILE))
        (tmp / META_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return Path(folder)


def load_prompt(folder: str | Path) -> tuple[Tensor, dict[str, Any]]:
    """Read a prompt folder (or a ``.safetensors`` file), or a peft prompt-tuning adapter folder
    (``adapter_model.safetensors``, as :func:`metapt_core.prompt_card.export_prompt` writes);
    never unpickles anything.

    Raises:
        DataError: missing or corrupt files, or a tensor that is not ``[P, d]``.
    """
    path = Path(folder)
    file = path if path.suffix == ".safetensors" else path / PROMPT_FILE
    name = "prompt"
    if not file.is_file() and (path / ADAPTER_FILE).is_file():
        file, name = path / ADAPTER_FILE, ADAPTER_TENSOR  # an exported peft adapter folder
    if not file.is_file():
        raise DataError(
            "prompt.init_file", str(folder), f"no {PROMPT_FILE} (nor a peft {ADAPTER_FILE}) there"
        )
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(
            "prompt.init_file",
            str(folder),
            f"corrupt prompt file ({str(exc).splitlines()[0][:80]})",
        ) from None
    prompt = tensors.get(name)
    if prompt is None or prompt.dim() != 2 or not torch.isfinite(prompt).all():
        raise DataError(
            "prompt.init_file", str(folder), f"holds no finite [P, d] tensor named {name!r}"
        )
    meta: dict[str, Any] = {}
    meta_file = file.parent / META_FILE
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise DataError(
                "prompt.init_file", str(folder), "prompt.json is not valid JSON"
            ) from None
    return prompt.float(), meta


def peft_adapter_config(
    task_type: str, length: int, dim: int, heads: int, layers: int, base_model: str
) -> Any:
    """peft's own ``PromptTuningConfig`` of a ``[length, dim]`` prompt (``task_type``
    ``CAUSAL_LM`` or ``SEQ_2_SEQ_LM``), naming ``base_model`` (a hub id where one is known, so
    another machine can resolve it). Its ``save_pretrained`` writes every field and peft's
    version."""
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    return PromptTuningConfig(
        task_type=TaskType(task_type),
        num_virtual_tokens=int(length),
        token_dim=int(dim),
        num_transformer_submodules=1,
        num_attention_heads=int(heads),
        num_layers=int(layers),
        prompt_tuning_init=PromptTuningInit.RANDOM,
        base_model_name_or_path=base_model,
        inference_mode=True,
    )


def write_peft_adapter(prompt: Tensor, config: Any, folder: str | Path) -> Path:
    """``folder`` with ``adapter_config.json`` (``config.save_pretrained``) and
    ``adapter_model.safetensors`` (``prompt_embeddings``: the ``[P, d]`` prompt), atomically."""
    with atomic_path(folder) as tmp:
        tmp.mkdir(parents=True)
        config.save_pretrained(str(tmp))
        save_file(
            {ADAPTER_TENSOR: prompt.detach().float().cpu().contiguous()}, str(tmp / ADAPTER_FILE)
        )
    return Path(folder)


def export_peft(
    prompt: Tensor, model: PromptModel, base_model_name_or_path: str, folder: str | Path
) -> Path:
    """Write ``prompt`` as a peft prompt-tuning adapter that ``PeftModel.from_pretrained`` loads.

    The adapter prepends the same P vectors to the (encoder) input embeddings, so it gives the
    same class scores as :class:`~metapt_core.lm.PromptModel` with ``prompt``.
    """
    config = model.model.config
    seq2seq = model.kind is BackboneKind.SEQ2SEQ
    adapter = peft_adapter_config(
        "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM",
        int(prompt.shape[0]),
        int(prompt.shape[1]),
        int(getattr(config, "num_attention_heads", getattr(config, "num_heads", 1))),
        int(getattr(config, "num_hidden_layers", getattr(config, "num_layers", 1))),
        base_model_name_or_path,
    )
    return write_peft_adapter(prompt, adapter, folder)
