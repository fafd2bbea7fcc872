"""Load a frozen backbone (decoder-only or encoder-decoder) by hub name or local folder."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
)

from metapt_core.config import BackboneConfig, BackboneKind, DType
from metapt_core.errors import ConfigError

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T = TypeVar("T")


class ProcessCache(Generic[T]):
    """Objects made once per process, by key, thread-safe: the loaded backbones here, the prompt
    models built on them in :mod:`metapt_core.lm`. :func:`clear_cache` empties every one."""

    _all: list[ProcessCache[Any]] = []

    def __init__(self) -> None:
        self._items: dict[Hashable, T] = {}
        self._lock = threading.Lock()
        ProcessCache._all.append(self)

    def get(self, key: Hashable, make: Callable[[], T]) -> T:
        """The object of ``key``, made by ``make()`` the first time (under the lock)."""
        with self._lock:
            if key not in self._items:
                self._items[key] = make()
            return self._items[key]

    def peek(self, key: Hashable) -> T | None:
        """The object of ``key`` if one was made, else None (nothing is made)."""
        with self._lock:
            return self._items.get(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_BACKBONES: ProcessCache[Backbone] = ProcessCache()


@dataclass
class Backbone:
    """A frozen model, its tokenizer, and what kind of model it is."""

    model: PreTrainedModel
    tokenizer: Any
    kind: BackboneKind  # CAUSAL or SEQ2SEQ, never AUTO
    name: str  # what the user asked for (hub name, path or builtin id)
    device: torch.device


def choose_device(requested: str) -> torch.device:
    """``auto`` -> the first CUDA device when one is present, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("backbone.device", requested, "CUDA is not available on this machine")
    return torch.device(requested)


def resolve_name(name_or_path: str, assets_dir: Path | None) -> str:
    """Map ``builtin:...`` names to prepared asset folders; anything else is returned as is."""
    from metapt_core.assets import resolve_model

    return resolve_model(name_or_path, assets_dir)


def load_backbone(cfg: BackboneConfig, assets_dir: Path | None = None) -> Backbone:
    """Load (once per process) and freeze the backbone named by ``cfg``.

    The model is put in eval mode with ``requires_grad=False`` on every parameter; only soft
    prompts are ever trained. ``trust_remote_code`` is off unless the config asks for it.
    """
    device = choose_device(cfg.device)
    key = (
        cfg.name_or_path,
        cfg.kind,
        cfg.dtype,
        str(device),
        cfg.trust_remote_code,
        cfg.revision,
        str(assets_dir),
    )
    return _BACKBONES.get(key, lambda: _load(cfg, assets_dir, device))


def _load(cfg: BackboneConfig, assets_dir: Path | None, device: torch.device) -> Backbone:
    """Load and freeze the backbone (what :func:`load_backbone` caches)."""
    torch_threads_from_env()
    path = resolve_name(cfg.name_or_path, assets_dir)
    local = Path(path).expanduser()
    if (local.is_absolute() or path.startswith(".")) and not local.exists():
        raise ConfigError("backbone.name_or_path", cfg.name_or_path, "no such folder")
    extra: dict[str, Any] = {"trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        extra["revision"] = cfg.revision
    try:
        hf_config = AutoConfig.from_pretrained(path, **extra)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "backbone.name_or_path",
            cfg.name_or_path,
            f"is not a loadable model ({first[:160]})",
        ) from None
    kind = cfg.kind
    if kind is BackboneKind.AUTO:
        kind = (
            BackboneKind.SEQ2SEQ
            if getattr(hf_config, "is_encoder_decoder", False)
            else BackboneKind.CAUSAL
        )
    auto_cls = AutoModelForSeq2SeqLM if kind is BackboneKind.SEQ2SEQ else AutoModelForCausalLM
    log.info(
        "loading backbone %s (%s, %s) on %s",
        cfg.name_or_path,
        kind.value,
        DType(cfg.dtype).value,
        device,
    )
    try:
        model = auto_cls.from_pretrained(path, dtype=_DTYPES[DType(cfg.dtype).value], **extra)
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            "backbone.name_or_path", cfg.name_or_path, f"could not be loaded ({first[:160]})"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.requires_grad_(False)
    model.eval()
    model.to(device)  # type: ignore[arg-type]
    return Backbone(
        model=model, tokenizer=tokenizer, kind=kind, name=cfg.name_or_path, device=device
    )


def clear_cache() -> None:
    """Forget the backbones (and the prompt models built on them) loaded in this process."""
    for cache in ProcessCache._all:
        cache.clear()


def torch_threads_from_env() -> None:
    """Honour ``METAPT_TORCH_THREADS`` (intra-op threads of this process; useful when several
    workers share a small machine). Applied when a process loads its first backbone.

    Raises:
        ConfigError: the variable is set to anything but a positive integer.
    """
    value = os.environ.get("METAPT_TORCH_THREADS", "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        raise ConfigError("METAPT_TORCH_THREADS", value, "must be a positive integer")
    torch.set_num_threads(int(value))
