"""The machinery PPT and MetaPT share: data, the training loop, adaptation, the prompt folder.

- :mod:`~metapt_core.pretraining.data`: shards as encoded tasks, held-out clusters, the
  validation episodes (held-out rows of training clusters and whole unseen clusters).
- :mod:`~metapt_core.pretraining.loop`: :func:`train_prompt` (validation, best-prompt
  selection, clipping, atomic checkpoints, exact resume) and the prompt folder.
- :mod:`~metapt_core.pretraining.adaptation`: scoring a prompt before and after the inner
  rule, the ``inner_lr: auto`` calibration, and the collapse warnings.
"""
