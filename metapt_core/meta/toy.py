"""A toy prompt model with the ``PromptModel`` interface, for fast tests and benchmarks.

A frozen random two-layer MLP scores ``C`` classes from the prompt's mean row and hashed
bag-of-words features of the text:

    h = tanh(A @ mean_p(prompt) + B @ f(text)),   scores = W @ h

It is smooth and non-linear in the prompt (so MAML's second-order term is not zero), is
deterministic across processes (``zlib.crc32`` hashing), and runs in float64 for finite
differences.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass
class ToyBatch:
    """Hashed text features ``Tensor[B, F]`` and gold class ids ``LongTensor[B]``."""

    features: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def select(self, indices: Sequence[int]) -> ToyBatch:
        """The rows at ``indices``."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ToyBatch(self.features[index], self.labels[index])


class ToyPromptModel(nn.Module):
    """A frozen random MLP over the prompt's mean row and hashed text features."""

    def __init__(
        self,
        embed_dim: int = 8,
        n_classes: int = 3,
        feature_dim: int = 16,
        hidden: int = 16,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.feature_dim = feature_dim
        self.n_classes = n_classes
        self.prompt_proj = nn.Parameter(torch.randn(hidden, embed_dim, generator=gen, dtype=dtype))
        self.text_proj = nn.Parameter(torch.randn(hidden, feature_dim, generator=gen, dtype=dtype))
        self.head = nn.Parameter(torch.randn(n_classes, hidden, generator=gen, dtype=dtype))
        self.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return int(self.prompt_proj.shape[1])

    @property
    def device(self) -> torch.device:
        return self.prompt_proj.device

    @property
    def dtype(self) -> torch.dtype:
        return self.prompt_proj.dtype

    def task_format(self, template: str, verbalizer: Sequence[str], name: str = "") -> Any:
        """The toy ignores formats: the plain ``(template, label words)`` pair."""
        return (template, tuple(verbalizer))

    def encode(
        self, texts: Sequence[str], labels: Sequence[int] | None, fmt: Any = None
    ) -> ToyBatch:
        """Bag of hashed words, L2-normalised; ``fmt`` is accepted and ignored."""
        features = torch.zeros(len(texts), self.feature_dim, dtype=self.dtype)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                features[row, zlib.crc32(word.encode()) % self.feature_dim] += 1.0
        features = features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)
        gold = torch.as_tensor(list(labels) if labels is not None else [-100] * len(texts))
        return ToyBatch(features.to(self.device), gold.long().to(self.device))

    def class_scores(self, prompt: Tensor, batch: ToyBatch) -> Tensor:
        """Class scores ``Tensor[B, C]`` for a prompt ``[P, d]`` or ``[B, P, d]``."""
        summary = prompt.mean(dim=-2)
        if summary.dim() == 1:
            summary = summary.expand(len(batch), -1)
        hidden = torch.tanh(summary @ self.prompt_proj.T + batch.features @ self.text_proj.T)
        return hidden @ self.head.T

    def loss(self, prompt: Tensor, batch: ToyBatch) -> Tensor:
        """Mean cross-entropy of the gold class."""
        return nn.functional.cross_entropy(self.class_scores(prompt, batch), batch.labels)

    def initial_prompt(self, length: int, generator: torch.Generator) -> Tensor:
        """A random ``Tensor[length, d]`` prompt (the toy's stand-in for ``init_prompt``)."""
        return 0.5 * torch.randn(length, self.embed_dim, generator=generator, dtype=self.dtype)
