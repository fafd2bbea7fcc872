"""Meta-learning of a soft-prompt initialisation (MetaPT): MAML, first-order MAML, Reptile."""

from metapt_core.meta.maml import (
    Episode,
    MetaGradient,
    inner_adapt,
    maml_task_loss,
    meta_gradient,
    meta_gradient_sum,
)
from metapt_core.meta.trainer import PretrainResult, meta_pretrain

__all__ = [
    "Episode",
    "MetaGradient",
    "PretrainResult",
    "inner_adapt",
    "maml_task_loss",
    "meta_gradient",
    "meta_gradient_sum",
    "meta_pretrain",
]
