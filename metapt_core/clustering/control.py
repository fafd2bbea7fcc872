"""The positive control's auxiliary tasks: each task leans to one class (its label prior).

Task ``j`` of ``k`` takes ``share`` of its ``m`` rows from its dominant class
``classes[j mod C]`` and the rest evenly from the other classes. A single prompt (PPT) can only
fit the mixture of these priors; one support batch reveals the task's dominant class, and one
inner step mostly moves the label prior, so an initialisation that is meta-learned for that step
must beat any single prompt on MAML's objective by a wide margin. A MAML that cannot win here is
broken, whatever it does on real clusters.

Rows are taken without replacement; ``m`` is the largest size every class can supply, and rows
left over are not used (labelled ``-1``).
"""

from __future__ import annotations

import numpy as np

from metapt_core.errors import DataError

UNUSED = -1


def label_prior_tasks(
    label_ids: np.ndarray, n_classes: int, n_tasks: int, share: float, seed: int
) -> np.ndarray:
    """Assign rows to ``n_tasks`` tasks with dominant classes cycling over the classes.

    Args:
        label_ids: ``int64[N]`` class of each row (``-1``: unlabelled, never used).
        n_classes: ``C`` (at least 2).
        n_tasks: ``k``; each class dominates ``k / C`` tasks (rounded by the cycle).
        share: the dominant class's share of each task's rows, in ``(1/C, 1)``.
        seed: the row shuffle.

    Returns:
        ``int64[N]`` task of each row, ``-1`` for rows not used.
    """
    if not 1.0 / n_classes < share < 1.0:
        raise DataError("cluster.dominant_share", share, f"must be in (1/{n_classes}, 1)")
    rng = np.random.default_rng([int(seed), 7])
    dominant = [j % n_classes for j in range(n_tasks)]
    other = (1.0 - share) / (n_classes - 1)
    # rows of class c that one row of task size m asks for, summed over tasks
    demand = np.array([sum(share if d == c else other for d in dominant) for c in range(n_classes)])
    supply = np.array([(label_ids == c).sum() for c in range(n_classes)], dtype=float)
    size = int(np.floor((supply / demand).min()))
    if size < n_classes * 2:
        raise DataError(
            "cluster.n_clusters",
            n_tasks,
            f"leaves {size} rows a task (class counts {supply.tolist()})",
        )
    queues = [list(rng.permutation(np.flatnonzero(label_ids == c))) for c in range(n_classes)]
    out = np.full(len(label_ids), UNUSED, dtype=np.int64)
    for task, major in enumerate(dominant):
        minor = int(round(other * size))
        counts = [size - minor * (n_classes - 1) if c == major else minor for c in range(n_classes)]
        for c, count in enumerate(counts):
            take, queues[c] = queues[c][:count], queues[c][count:]
            out[np.asarray(take, dtype=np.int64)] = task
    return out
