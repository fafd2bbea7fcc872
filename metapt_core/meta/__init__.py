"""Meta-learning of a soft-prompt initialisation (MetaPT): MAML, first-order MAML, Reptile.

The meta-gradients are in :mod:`~metapt_core.meta.maml`; the trainer,
:func:`metapt_core.meta.trainer.meta_pretrain`, is imported from its module (it builds on
:mod:`metapt_core.pretraining`, which itself uses the inner rule here).
"""

from metapt_core.meta.maml import (
    Episode,
    MetaGradient,
    inner_adapt,
    maml_task_loss,
    meta_gradient,
    meta_gradient_sum,
)

__all__ = [
    "Episode",
    "MetaGradient",
    "inner_adapt",
    "maml_task_loss",
    "meta_gradient",
    "meta_gradient_sum",
]
