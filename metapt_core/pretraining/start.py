"""How a pre-training run starts: its initial prompt, its optimiser, its identity for resume."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metapt_core.config import Optimizer, to_dict
from metapt_core.errors import ConfigError
from metapt_core.pretraining.data import PromptObjective
from metapt_core.specs import MetaSpec, PPTSpec
from metapt_core.store import sha256_file, stable_hash


def make_optimizer(name: Optimizer | str, params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """The outer optimiser: ``adam`` or ``sgd``."""
    if name == Optimizer.ADAM:
        return torch.optim.Adam(params, lr=lr)
    if name == Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr)
    raise ConfigError("meta.outer_optimizer", name, "must be adam or sgd")


def starting_prompt(
    model: PromptObjective, cfg: MetaSpec | PPTSpec, initial: Tensor | None
) -> Tensor:
    """``initial`` if given, else ``init_prompt(model, cfg.prompt)`` seeded by ``meta.seed``.

    The prompt is float32 (float64 kept for float64 toy models) on the model's device. The
    grid's untrained initialisation of pre-training seed ``s`` is drawn the same way, so
    ``prompt.init``'s cell of seed ``s`` is exactly where PPT and MetaPT of seed ``s`` started.
    """
    if initial is None:
        from metapt_core.prompt import init_prompt

        generator = torch.Generator().manual_seed(int(cfg.meta.seed))
        initial = init_prompt(model, cfg.prompt, generator)  # type: ignore[arg-type]
    dtype = torch.float64 if initial.dtype == torch.float64 else torch.float32
    return initial.detach().to(device=model.device, dtype=dtype)


def tensor_hash(tensor: Tensor) -> str:
    """sha256 of a tensor's bytes (the initial prompt is part of a run's identity)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def run_fingerprint(kind: str, cfg: MetaSpec | PPTSpec, shards: Path, extra: dict[str, Any]) -> str:
    """Identity of a training run for resume: the stage's spec (less the settings that only
    schedule checkpoints) and the data."""
    spec = to_dict(cfg)
    spec["meta"].pop("checkpoint_every", None)
    manifest = shards / "manifest.json"
    return stable_hash(
        {
            "kind": kind,
            "spec": spec,
            "shards": sha256_file(manifest) if manifest.is_file() else "",
            **extra,
        }
    )


def backbone_parameters(model: Any) -> list[Tensor]:
    """The frozen weights behind a prompt model (``model.model`` for a PromptModel)."""
    module = getattr(model, "model", model)
    return list(module.parameters()) if hasattr(module, "parameters") else []


class frozen_backbone:  # noqa: N801 - used as a context manager
    """Assert on exit that no backbone parameter asks for a gradient or received one."""

    def __init__(self, model: PromptObjective) -> None:
        self.params = backbone_parameters(model)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and any(p.requires_grad or p.grad is not None for p in self.params):
            raise RuntimeError(
                "a backbone parameter requires or holds a gradient; it must stay frozen"
            )
