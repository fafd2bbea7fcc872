"""The meta-objective check: its statistics against a reference, its episodes, and its verdicts
on a positive control where MAML must win and on deliberately broken MAMLs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metapt_core.config import MetaAlgorithm
from metapt_core.meta.maml import Episode, meta_gradient
from metapt_core.meta.toy import ToyPromptModel
from metapt_core.objective import meta_objective_rows, verdict
from metapt_core.pretraining.episodes import (
    UNSEEN_STREAM,
    AuxTask,
    check_episodes,
    fixed_episodes,
)
from metapt_core.pretraining.objective import episode_losses

CHANCE3 = math.log(3)


def test_rows_are_paired_means_with_bootstrap_bounds() -> None:
    rng = np.random.default_rng(0)
    before = rng.uniform(1.0, 1.5, 40)
    initial = (before, before - 0.05)
    ppt = (before - 0.2, before - 0.25)
    good = (before - 0.1, before - 0.6 + rng.normal(0, 0.05, 40))
    bad = (before, before + 0.05)
    rows = {
        r.init: r
        for r in meta_objective_rows(
            {"initial": initial, "ppt": ppt, "metapt_maml": good, "metapt_fomaml": bad},
            pretrain_seed=3,
            inner_lr=0.5,
            n_classes=3,
            resamples=4000,
        )  # fmt: skip
    }
    maml = rows["metapt_maml"]
    assert maml.episodes == 40 and maml.pretrain_seed == 3 and maml.inner_lr == 0.5
    assert math.isclose(maml.loss_after, float(good[1].mean()))
    assert math.isclose(maml.diff_vs_ppt, float((good[1] - ppt[1]).mean()))
    assert math.isclose(maml.vs_initial, float((good[1] - initial[1]).mean()))
    assert maml.after_low < maml.loss_after < maml.after_high
    # the paired bound is far tighter than the unpaired spread of the two means
    assert maml.diff_high - maml.diff_low < 0.5 * (maml.after_high - maml.after_low)
    # percentile bounds of a mean of 40: about 1.96 standard errors either side
    se = float(good[1].std(ddof=0)) / math.sqrt(40)
    assert math.isclose(maml.after_high - maml.after_low, 2 * 1.96 * se, rel_tol=0.15)
    assert maml.trained is True and maml.beats_ppt is True
    assert rows["metapt_fomaml"].trained is False and rows["metapt_fomaml"].beats_ppt is False
    assert rows["ppt"].trained is None and math.isnan(rows["ppt"].diff_vs_ppt)
    assert "did not train on pre-training seed 3" in verdict(rows["metapt_fomaml"])
    assert "beats PPT on its own objective" in verdict(maml)


def test_a_prompt_below_the_initial_but_above_chance_has_not_trained() -> None:
    before = np.full(20, 2.0)
    rows = meta_objective_rows(
        {"initial": (before, before + 0.5), "metapt_maml": (before, before - 0.5)}, 0, 1.0, 3
    )
    maml = next(r for r in rows if r.init == "metapt_maml")
    assert maml.vs_initial_high < 0 and maml.after_low > CHANCE3 and maml.trained is False


def _task(cluster: int, n: int, seed: int) -> AuxTask:
    labels = np.random.default_rng(seed).integers(0, 3, n)
    rows = np.arange(n, dtype=np.int64)
    return AuxTask(cluster, tuple(f"t{i}" for i in range(n)), labels, rows, rows[:0])


def test_check_episodes_are_disjoint_from_the_selection_episodes() -> None:
    held = [_task(4, 60, 0), _task(7, 50, 1)]
    used = fixed_episodes(held, 4, 4, 4, seed=0, stream=UNSEEN_STREAM, validation=False)
    checked = check_episodes(held, used, 16, 4, 4, seed=0)
    assert len(checked) == 16
    taken = {(u.task_index, int(r)) for u in used for r in (*u.support, *u.query)}
    for episode in checked:
        assert set(episode.support.tolist()).isdisjoint(episode.query.tolist())
        for row in (*episode.support, *episode.query):
            assert (episode.task_index, int(row)) not in taken
    assert check_episodes(held, used, 0, 4, 4, 0) == [] and check_episodes([], [], 4, 4, 4, 0) == []


# ---------------------------------------------------------------- the positive control, toy

WORDS = [f"w{i}" for i in range(40)]


def _leaning_batch(model: ToyPromptModel, major: int, n: int, rng: np.random.Generator) -> object:
    """``n`` rows of random words, 85% of them of class ``major``."""
    labels = [
        major if rng.random() < 0.85 else int(rng.choice([c for c in range(3) if c != major]))
        for _ in range(n)
    ]
    return model.encode([" ".join(rng.choice(WORDS, 5)) for _ in range(n)], labels)


def _episodes(model: ToyPromptModel, rng: np.random.Generator, n: int) -> list[Episode]:
    out = []
    for _ in range(n):
        major = int(rng.integers(3))
        out.append(
            Episode(_leaning_batch(model, major, 8, rng), _leaning_batch(model, major, 8, rng))
        )
    return out


def _train(model: ToyPromptModel, init: torch.Tensor, inner_lr: float | None) -> torch.Tensor:
    """150 Adam steps of MAML at ``inner_lr`` (None: PPT, the plain loss on every row)."""
    prompt = torch.nn.Parameter(init.clone())
    opt = torch.optim.Adam([prompt], lr=0.05)
    rng = np.random.default_rng(1)
    for _ in range(150):
        episodes = _episodes(model, rng, 4)
        if inner_lr is not None:
            grad = meta_gradient(
                prompt.detach(), episodes, model.loss, MetaAlgorithm.MAML, inner_lr, 1
            ).grad
        else:
            theta = prompt.detach().requires_grad_(True)
            loss = sum(model.loss(theta, e.support) + model.loss(theta, e.query) for e in episodes)
            (grad,) = torch.autograd.grad(loss / (2 * len(episodes)), theta)
        opt.zero_grad()
        prompt.grad = grad
        opt.step()
    return prompt.detach()


@pytest.fixture(scope="module")
def control_rows() -> dict[str, object]:
    model = ToyPromptModel(embed_dim=8, n_classes=3, feature_dim=16, hidden=16, seed=0)
    init = model.initial_prompt(4, torch.Generator().manual_seed(0))
    prompts = {
        "initial": init,
        "ppt": _train(model, init, None),
        "metapt_maml": _train(model, init, 1.0),
        "metapt_flipped": _train(model, init, -1.0),  # the inner step's sign flipped
        "metapt_alpha30": _train(model, init, 30.0),  # far past the stable step
    }
    check = _episodes(model, np.random.default_rng(99), 32)
    losses = {name: episode_losses(p, check, model, 1.0, 1) for name, p in prompts.items()}
    return {r.init: r for r in meta_objective_rows(losses, 0, 1.0, 3)}


def test_positive_control_maml_beats_ppt_on_its_own_objective(control_rows: dict) -> None:
    maml, ppt = control_rows["metapt_maml"], control_rows["ppt"]
    assert maml.trained and maml.beats_ppt
    assert maml.diff_high < -0.1  # a wide margin: 0.33 nats measured, bound below -0.16
    assert maml.loss_after < ppt.loss_after < CHANCE3 + 0.1


def test_check_flags_broken_mamls(control_rows: dict) -> None:
    for name in ("metapt_flipped", "metapt_alpha30"):
        row = control_rows[name]
        assert row.trained is False and row.beats_ppt is False, name


def test_label_prior_tasks_lean_to_their_class() -> None:
    from metapt_core.clustering.control import label_prior_tasks

    labels = np.repeat([0, 1, 2], [700, 600, 300])
    labels = np.random.default_rng(0).permutation(np.append(labels, [-1] * 10))
    tasks = label_prior_tasks(labels, 3, 6, 0.85, seed=0)
    assert (tasks[labels < 0] == -1).all()  # unlabelled rows are never used
    sizes = [int((tasks == t).sum()) for t in range(6)]
    assert len(set(sizes)) == 1 and sizes[0] > 0
    for task in range(6):
        members = labels[tasks == task]
        share = float((members == task % 3).mean())
        assert abs(share - 0.85) < 0.02, (task, share)
        assert set(np.unique(members)) == {0, 1, 2}  # the other classes are there too
    used = tasks >= 0
    assert np.bincount(labels[used], minlength=3)[2] <= 300  # no row used twice
    from metapt_core.errors import DataError

    with pytest.raises(DataError, match="dominant_share"):
        label_prior_tasks(labels, 3, 6, 0.2, seed=0)


def test_support_prior_is_the_add_one_smoothed_support_frequency() -> None:
    from metapt_core.objective import support_prior_losses

    support = [np.array([0, 0, 0, 1]), np.array([2, 2])]
    query = [np.array([0, 1, 2]), np.array([2])]
    got = support_prior_losses(support, query, 3)
    # episode 0: counts + 1 = (4, 2, 1) / 7; episode 1: (1, 1, 3) / 5
    want = [-(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3, -math.log(3 / 5)]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # a support that says nothing (all classes once) predicts chance
    flat = support_prior_losses([np.array([0, 1, 2])], [np.array([1, 2])], 3)
    assert math.isclose(float(flat[0]), CHANCE3)


def test_meta_learned_rows_are_compared_with_the_support_prior() -> None:
    rng = np.random.default_rng(1)
    prior = rng.uniform(0.4, 0.6, 30)
    losses = {
        "initial": (prior + 1.5, prior + 1.4),
        "ppt": (prior + 0.5, prior + 0.4),
        "support_prior": (prior, prior),
        "metapt_maml": (prior + 0.4, prior + 0.3 + rng.normal(0, 0.02, 30)),
    }
    rows = {r.init: r for r in meta_objective_rows(losses, 0, 0.1, 3)}
    maml = rows["metapt_maml"]
    assert math.isclose(maml.vs_prior, float((losses["metapt_maml"][1] - prior).mean()))
    assert maml.vs_prior_low > 0 and maml.beats_prior is False
    assert maml.trained is True and maml.beats_ppt is True
    assert rows["ppt"].beats_prior is None and rows["support_prior"].trained is None
    assert math.isnan(rows["support_prior"].vs_prior)
    line = verdict(maml)
    assert "beats PPT" in line and "does not beat counting the support's labels" in line
    better = dict(losses, metapt_maml=(prior, prior - 0.2))
    row = next(r for r in meta_objective_rows(better, 0, 0.1, 3) if r.init == "metapt_maml")
    assert row.beats_prior is True and "it beats counting" in verdict(row)
