"""A prompt scored before and after the inner rule; the inner-lr calibration; collapse warnings.

The inner rule is ``k`` SGD steps on an episode's support, ``theta' = theta - alpha grad
L_S(theta)`` repeated (what a meta-learned initialisation is for). The *adaptation gain* of a
prompt on a set of episodes is the mean query loss before adaptation minus the mean after:

    gain(alpha) = mean_e L_{Q_e}(theta) - mean_e L_{Q_e}(theta'_e(alpha))

``meta.inner_lr: auto`` picks ``argmax_alpha gain(alpha)`` over ``meta.inner_lr_grid`` on the
unseen (held-out) clusters' episodes only, from the run's initial prompt.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metapt_core.errors import ConfigError
from metapt_core.meta.maml import Episode, inner_adapt
from metapt_core.pretraining import distributed as dist_utils
from metapt_core.pretraining.data import PromptObjective

log = logging.getLogger(__name__)

CHANCE_MARGIN = 0.02  # nats: a validation loss this close to log(C) learned nothing
COLLAPSE_SHARE = 0.95  # predictions: this share in one class is a collapse


def evaluate_adapted(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    model: PromptObjective,
    inner_lr: float,
    inner_steps: int,
    prefix: str = "val",
    max_step_ratio: float = 0.0,
) -> dict[str, float]:
    """Query loss, accuracy and the largest predicted-class share, before and after adapting.

    Adaptation is ``inner_steps`` of SGD at ``inner_lr`` on each episode's support, with no
    second-order graph. In a process group each rank evaluates its slice and the sums are
    all-reduced.

    Returns:
        ``{prefix}_loss``, ``{prefix}_acc``, ``{prefix}_top_share`` (after adaptation) and the
        same with ``_0`` (before), each over the query rows of all episodes; ``top_share`` is
        the share of query rows predicted as the most predicted class.
    """
    local = dist_utils.local_slice(list(episodes))
    n_classes = 0
    sums = torch.zeros(5, dtype=torch.float64)
    counts: dict[int, torch.Tensor] = {}
    for episode in local:
        adapted = inner_adapt(
            prompt.detach(),
            episode.support,
            model.loss,
            inner_lr,
            inner_steps,
            create_graph=False,
            max_step_ratio=max_step_ratio,
        )
        labels = episode.query.labels
        with torch.no_grad():
            for offset, theta in ((0, adapted), (2, prompt)):
                scores = model.class_scores(theta.detach(), episode.query).float()
                n_classes = scores.shape[-1]
                sums[offset] += float(F.cross_entropy(scores, labels, reduction="sum"))
                preds = scores.argmax(dim=-1).cpu()
                sums[offset + 1] += float((preds == labels.cpu()).sum())
                hist = torch.bincount(preds, minlength=n_classes).double()
                counts[offset] = counts.get(offset, torch.zeros(n_classes, dtype=torch.float64))
                counts[offset] += hist
        sums[4] += len(labels)
    # A rank may hold no episode (fewer episodes than ranks): every rank reduces the same width.
    width = max(dist_utils.all_reduce_max(n_classes), 1)
    hists = [counts.get(k, torch.zeros(0, dtype=torch.float64)) for k in (0, 2)]
    after, before = (F.pad(h, (0, width - len(h))) for h in hists)
    extra = [*after.tolist(), *before.tolist()]
    _, reduced = dist_utils.reduce_sums(torch.zeros(1), [*sums.tolist(), *extra])
    rows = max(reduced[4], 1.0)
    hist_after, hist_before = reduced[5 : 5 + width], reduced[5 + width :]
    return {
        f"{prefix}_loss": reduced[0] / rows,
        f"{prefix}_acc": reduced[1] / rows,
        f"{prefix}_top_share": max(hist_after, default=0.0) / rows,
        f"{prefix}_loss_0": reduced[2] / rows,
        f"{prefix}_acc_0": reduced[3] / rows,
        f"{prefix}_top_share_0": max(hist_before, default=0.0) / rows,
    }


@dataclass(frozen=True)
class Calibration:
    """The inner learning rate of a run and how it was chosen.

    ``sweep`` holds one ``{"alpha", "loss_before", "loss_after", "gain"}`` per candidate
    (empty when alpha was given); ``episodes`` is the number of unseen-cluster episodes used.
    """

    alpha: float
    sweep: list[dict[str, float]] = field(default_factory=list)
    episodes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "auto": bool(self.sweep),
            "sweep": list(self.sweep),
            "episodes": self.episodes,
            "seconds": self.seconds,
        }


def calibrate_inner_lr(
    prompt: Tensor,
    episodes: Sequence[Episode[Any]],
    model: PromptObjective,
    grid: Sequence[float],
    inner_steps: int,
) -> Calibration:
    """The alpha of ``grid`` with the largest adaptation gain on ``episodes`` (module docstring).

    ``episodes`` must come from clusters the run never trains on (held-out clusters): the
    choice then measures adaptation to new tasks and reads no test data. Ties go to the
    smaller alpha. Cost: ``len(grid) * len(episodes)`` inner adaptations and query passes.
    """
    import time

    if not episodes:
        raise ConfigError("meta.val_clusters", 0, "meta.inner_lr=auto needs held-out clusters")
    started = time.perf_counter()
    sweep = []
    for alpha in sorted(float(a) for a in grid):
        scores = evaluate_adapted(prompt, episodes, model, alpha, inner_steps, prefix="c")
        sweep.append(
            {
                "alpha": alpha,
                "loss_before": scores["c_loss_0"],
                "loss_after": scores["c_loss"],
                "gain": scores["c_loss_0"] - scores["c_loss"],
            }
        )
    best = max(sweep, key=lambda r: (r["gain"], -r["alpha"]))
    seconds = time.perf_counter() - started
    listing = ", ".join(f"{r['alpha']:g}: {r['gain']:+.4f}" for r in sweep)
    log.info(
        "inner_lr auto: gain by alpha %s -> alpha %g (%.1f s)", listing, best["alpha"], seconds
    )
    if best["gain"] <= 0:
        log.warning(
            "inner_lr auto: no alpha lowers the held-out query loss; using %g", best["alpha"]
        )
    return Calibration(best["alpha"], sweep, len(episodes), seconds)


_CALIBRATIONS: dict[str, Calibration] = {}  # in-process memo: PPT and MetaPT of one seed share it


def resolve_inner_lr(
    inner_lr: float | str,
    grid: Sequence[float],
    inner_steps: int,
    prompt: Tensor,
    unseen: Sequence[Episode[Any]],
    model: PromptObjective,
    key: str = "",
) -> Calibration:
    """``inner_lr`` as given, or (``"auto"``) calibrated on the unseen clusters' episodes.

    ``key`` identifies the calibration's inputs (initial prompt, shards, episode settings,
    model): the PPT controls and MetaPT of one pre-training seed calibrate on the same prompt
    and episodes, so within one process the sweep runs once and is reused (the same numbers).
    """
    if inner_lr != "auto":
        return Calibration(float(inner_lr))
    if key and key in _CALIBRATIONS:
        found = _CALIBRATIONS[key]
        log.info("inner_lr auto: alpha %g (the sweep of this seed, already run)", found.alpha)
        return found
    found = calibrate_inner_lr(prompt, unseen, model, grid, inner_steps)
    if key:
        _CALIBRATIONS[key] = found
    return found


def calibration_key(pool: str, initial_hash: str, shards_hash: str, meta: Any, model: Any) -> str:
    """The identity of a calibration's inputs (see :func:`resolve_inner_lr`)."""
    from metapt_core.store import stable_hash

    fields = ("inner_lr_grid", "inner_steps", "support_size", "query_size", "val_clusters",
              "val_episodes", "val_fraction", "seed")  # fmt: skip
    return stable_hash(
        {
            "initial": initial_hash,
            "shards": shards_hash,
            "meta": {f: getattr(meta, f) for f in fields},
            "model": f"{pool}:{getattr(model, 'name', type(model).__name__)}:{id(model)}",
        }
    )


def collapse_warnings(history: Sequence[dict[str, Any]], n_classes: int) -> list[str]:
    """Warnings on a finished run's last validation: a loss at or above chance (``log C``) less
    ``CHANCE_MARGIN`` (one-sided: worse than chance is flagged too), or predictions of which
    ``COLLAPSE_SHARE`` or more fall in one class.

    Each validation set (``val``: held-out rows; ``unseen``: held-out clusters) is checked
    after adaptation.
    """
    last: dict[str, Any] = {}
    for record in history:
        last.update({k: v for k, v in record.items() if k.endswith(("_loss", "_top_share"))})
    chance = math.log(max(n_classes, 2))
    out = []
    for prefix in ("val", "unseen"):
        loss, share = last.get(f"{prefix}_loss"), last.get(f"{prefix}_top_share")
        if loss is not None and float(loss) >= chance - CHANCE_MARGIN:
            out.append(
                f"{prefix} loss {float(loss):.4f} is at or above chance less {CHANCE_MARGIN} "
                f"(log {n_classes} = {chance:.4f}): the prompt learned nothing measurable"
            )
        if share is not None and float(share) >= COLLAPSE_SHARE:
            out.append(
                f"{prefix} predictions collapse to one class ({100 * float(share):.0f}% of "
                "query rows)"
            )
    return out


def validation_fn(
    val: Sequence[Episode[Any]],
    unseen: Sequence[Episode[Any]],
    model: PromptObjective,
    inner_lr: float | Callable[[], float],
    inner_steps: int,
    max_step_ratio: float = 0.0,
) -> Any:
    """The loop's validation: :func:`evaluate_adapted` on held-out rows (``val_*``) and on
    unseen clusters (``unseen_*``), each where it has episodes; None when neither has.

    ``inner_lr`` may be a callable giving the current rate (MetaPT re-sizes it as it trains);
    the rate used is returned as ``inner_lr``, so every validation says which rule it scored."""
    if not val and not unseen:
        return None

    def run(prompt: Tensor) -> dict[str, float]:
        alpha = inner_lr() if callable(inner_lr) else inner_lr
        out: dict[str, float] = {"inner_lr": float(alpha)}
        for prefix, episodes in (("val", val), ("unseen", unseen)):
            if episodes:
                out.update(
                    evaluate_adapted(
                        prompt, episodes, model, alpha, inner_steps, prefix, max_step_ratio
                    )
                )
        return out

    return run


def embedding_norm(model: Any) -> float:
    """Mean row norm of the backbone's input embeddings (NaN for a model without them)."""
    matrix = getattr(model, "embedding_matrix", None)
    if matrix is None:
        return math.nan
    with torch.no_grad():
        return float(matrix.detach().float().norm(dim=-1).mean())


def prompt_norm_ratio(prompt: Tensor, reference: float) -> float:
    """Mean row norm of the prompt ``[P, d]`` over the mean embedding row norm."""
    if not math.isfinite(reference) or reference <= 0:
        return math.nan
    return float(prompt.detach().float().norm(dim=-1).mean()) / reference
