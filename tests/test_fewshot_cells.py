"""Grid cells on a tiny random Llama: batched = alone, deterministic, paired splits, zero-shot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from metapt_core.backbone import load_backbone
from metapt_core.config import (
    BackboneConfig,
    FewShotConfig,
    GridConfig,
    InitMethod,
    PipelineConfig,
    PromptConfig,
    Protocol,
    ScoringConfig,
    SourceConfig,
    TargetTaskConfig,
)
from metapt_core.errors import ConfigError
from metapt_core.fewshot.cells import (
    encode_rows,
    initial_prompt,
    run_cell_group,
    run_cells,
    zero_shot,
)
from metapt_core.fewshot.grid import Cell, build_grid
from metapt_core.fewshot.tuning import tune_prompts
from metapt_core.lm import PromptModel, TaskFormat
from metapt_core.specs import EvalSpec
from metapt_core.tiny import CORPUS, make_tiny_llama

POSITIVE = [
    "the movie was good",
    "i love this phone",
    "an honest moving story",
    "good music",
    "great actors",
]
NEGATIVE = [
    "a terrible film",
    "bad acting",
    "a boring plot",
    "the battery is bad",
    "terrible service",
]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> PromptModel:
    folder = make_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama")
    backbone = load_backbone(BackboneConfig(name_or_path=str(folder), device="cpu"))
    return PromptModel(backbone, ScoringConfig(max_length=24))


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    (root / "toy").mkdir()
    for split, reps in (("train", 3), ("test", 1)):
        data = []
        for r in range(reps):
            for label_id, texts in ((0, NEGATIVE), (1, POSITIVE)):
                for i, text in enumerate(texts):
                    data.append(
                        {
                            "row_id": f"toy-{split}:{label_id}:{r}:{i}",
                            "text": f"{text} {CORPUS[(i + r) % len(CORPUS)].split()[0]}",
                            "label": ["negative", "positive"][label_id],
                            "label_id": label_id,
                            "source": "toy",
                        }
                    )
        pd.DataFrame(data).to_parquet(root / "toy" / f"{split}.parquet")
    return root


def config(dev: int = 0, inits: list[InitMethod] | None = None) -> PipelineConfig:
    return PipelineConfig(
        tasks=[TargetTaskConfig(name="toy", train=SourceConfig(name="toy", path="toy"))],
        prompt=PromptConfig(length=3),
        fewshot=FewShotConfig(
            shots=[4],
            seeds=[0, 1],
            dev_per_class=dev,
            steps=6,
            batch_size=4,
            lr=0.1,
            eval_every=3,
            eval_batch_size=8,
        ),
        grid=GridConfig(
            inits=inits or [InitMethod.RANDOM, InitMethod.SAMPLE_VOCAB, InitMethod.PPT]
        ),
    )


def pretrained(model: PromptModel) -> dict[InitMethod, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    return {InitMethod.PPT: torch.randn(3, model.embed_dim, generator=g) * 0.02}


def test_batched_prompts_train_like_prompts_alone(model: PromptModel, tasks_dir: Path):
    cfg = config()
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    rows = pd.read_parquet(tasks_dir / "toy" / "train.parquet")
    batch = encode_rows(model, rows, fmt)
    inits = torch.randn(3, 3, model.embed_dim, generator=torch.Generator().manual_seed(0)) * 0.05
    seeds = [5, 6, 7]
    batched, _ = tune_prompts(model, inits, batch, cfg.fewshot, seeds)
    for m in range(3):
        alone, _ = tune_prompts(model, inits[m : m + 1], batch, cfg.fewshot, seeds[m])
        assert torch.allclose(batched[m], alone[0], atol=1e-5), (batched[m] - alone[0]).abs().max()
        assert not torch.allclose(alone[0], inits[m], atol=1e-3)


class HiddenRowLosses:
    """The model without ``row_losses``: the tuner's path before per-prompt curves."""

    accepts_grouped_prompts = True

    def __init__(self, model: PromptModel) -> None:
        self.model = model

    def loss(self, prompt: torch.Tensor, batch: object) -> torch.Tensor:
        return self.model.loss(prompt, batch)  # type: ignore[arg-type]

    def class_scores(self, prompt: torch.Tensor, batch: object) -> torch.Tensor:
        return self.model.class_scores(prompt, batch)  # type: ignore[arg-type]


def test_per_prompt_curves_leave_the_trained_prompts_bit_identical(
    model: PromptModel, tasks_dir: Path
):
    """Each prompt's own loss comes from ``row_losses`` in the training pass; the prompts
    trained that way equal, bit for bit, those trained on ``loss`` (the gradient is the same),
    and each curve is that prompt's own: it matches the prompt trained alone."""
    cfg = config()
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    batch = encode_rows(model, pd.read_parquet(tasks_dir / "toy" / "train.parquet"), fmt)
    inits = torch.randn(3, 3, model.embed_dim, generator=torch.Generator().manual_seed(0)) * 0.05
    seeds = [5, 6, 7]
    with_rows, hist = tune_prompts(model, inits, batch, cfg.fewshot, seeds)
    without, hist_without = tune_prompts(HiddenRowLosses(model), inits, batch, cfg.fewshot, seeds)
    assert torch.equal(with_rows, without)
    assert len(hist.prompt_loss) == 3 and all(len(c) == cfg.fewshot.steps for c in hist.prompt_loss)
    assert hist.prompt_loss[0] != hist.prompt_loss[1]
    for m in range(3):
        assert hist.for_prompt(m)["train_loss"] == hist.prompt_loss[m]
        assert hist.prompt_loss[m] == pytest.approx(hist_without.prompt_loss[m], abs=1e-5)
        _, alone = tune_prompts(model, inits[m : m + 1], batch, cfg.fewshot, seeds[m])
        assert hist.prompt_loss[m] == pytest.approx(alone.train_loss, abs=1e-4)


def test_group_equals_cells_one_by_one(model: PromptModel, tasks_dir: Path):
    cfg = config(dev=2)
    cells = [c for c in build_grid(cfg) if c.seed == 0]
    spec = EvalSpec.of(cfg, "toy", 4, 0)
    together = run_cell_group(model, cells, tasks_dir, pretrained(model), spec)
    for cell, res in zip(cells, together):
        (alone,) = run_cell_group(model, [cell], tasks_dir, pretrained(model), spec)
        assert alone.test_accuracy == pytest.approx(res.test_accuracy, abs=1e-9)
        assert alone.best_step == res.best_step
        assert res.group_size == 3 and alone.group_size == 1
        assert res.n_dev == 4 and res.n_train == 8 and res.n_test == 10


def test_cells_are_deterministic_and_paired(model: PromptModel, tasks_dir: Path):
    cfg = config()
    cells = build_grid(cfg)
    first = run_cells(model, cells, tasks_dir, pretrained(model), cfg)
    second = run_cells(model, cells, tasks_dir, pretrained(model), cfg)
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "wall_seconds"}  # noqa: E731
    assert [strip(r) for r in first] == [strip(r) for r in second]
    by_seed: dict[int, set[str]] = {}
    for r in first:
        by_seed.setdefault(r.seed, set()).add(r.split_id)
    assert all(len(ids) == 1 for ids in by_seed.values())  # all inits of a seed: one split
    assert by_seed[0] != by_seed[1]
    assert {r.cell_id for r in first} == {c.cell_id for c in cells}


def test_missing_pretrained_prompt_is_named(model: PromptModel, tasks_dir: Path):
    spec = EvalSpec.of(config(inits=[InitMethod.METAPT_MAML]), "toy", 4, 0)
    with pytest.raises(ConfigError, match="grid.inits='metapt_maml'"):
        run_cell_group(model, [Cell("toy", InitMethod.METAPT_MAML, 4, 0)], tasks_dir, {}, spec)


def test_zero_shot_scores_without_a_prompt(model: PromptModel, tasks_dir: Path):
    spec = config().tasks[0]
    out = zero_shot(model, spec, tasks_dir, batch_size=4)
    assert out["n"] == 10 and 0.0 <= out["accuracy"] <= 1.0
    assert out == zero_shot(model, spec, tasks_dir, batch_size=7)


def test_label_word_and_untrained_inits_come_from_the_pretraining_seed(model: PromptModel):
    cfg = config()
    spec = EvalSpec.of(cfg, "toy", 4, 0)
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    cell = Cell("toy", InitMethod.LABEL_WORDS, 4, 0, pretrain_seed=7)
    got = initial_prompt(model, cell, {}, spec)
    emb = model.embedding_matrix.detach().float()
    for c, ids in enumerate(model.label_tokens(fmt)):
        assert torch.allclose(got[c], emb[list(ids)].mean(dim=0))
    # the filler, like every untrained prompt, is drawn from the pre-training seed
    assert torch.equal(
        got, initial_prompt(model, Cell("toy", InitMethod.LABEL_WORDS, 4, 1, 7), {}, spec)
    )
    assert not torch.equal(
        got, initial_prompt(model, Cell("toy", InitMethod.LABEL_WORDS, 4, 0, 8), {}, spec)
    )
    vocab = initial_prompt(model, Cell("toy", InitMethod.SAMPLE_VOCAB, 4, 0, 7), {}, spec)
    from metapt_core.prompt import init_prompt

    start = init_prompt(model, cfg.prompt, torch.Generator().manual_seed(7))
    assert torch.equal(vocab, start)  # where PPT and MetaPT of seed 7 start
    text = initial_prompt(model, Cell("toy", InitMethod.TEXT, 4, 0, 7), {}, spec)
    assert text.shape == (3, model.embed_dim)


def test_inner_protocol_and_untuned_scores(model: PromptModel, tasks_dir: Path):
    spec = EvalSpec.of(config(), "toy", 4, 0)
    inits = [InitMethod.RANDOM, InitMethod.PPT]
    cells = [Cell("toy", i, 4, 0, 0, p) for p in (Protocol.FEWSHOT, Protocol.INNER) for i in inits]
    untuned: list[dict] = []
    results = run_cell_group(model, cells, tasks_dir, pretrained(model), spec, 0.5, untuned)
    assert [r.protocol for r in results] == ["fewshot", "fewshot", "inner", "inner"]
    assert all(len(r.test_correct) == r.n_test == 10 for r in results)
    assert all(r.test_accuracy == pytest.approx(r.test_correct.count("1") / 10) for r in results)
    # the inner rule is one full-batch SGD step at alpha: the same as tuning that way by hand
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    from metapt_core.fewshot.sampling import sample_split
    from metapt_core.fewshot.tuning import evaluate

    split = sample_split(
        pd.read_parquet(tasks_dir / "toy" / "train.parquet"), ["negative", "positive"], 4, 0
    )
    start = pretrained(model)[InitMethod.PPT]
    theta = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        model.loss(theta, encode_rows(model, split.train_rows, fmt)), theta
    )
    test = encode_rows(model, pd.read_parquet(tasks_dir / "toy" / "test.parquet"), fmt)
    by_hand = evaluate(model, (start - 0.5 * grad).detach(), test, 8)
    assert results[3].test_accuracy == pytest.approx(by_hand["accuracy"])
    # untuned: once per (init, pre-training seed), the initial prompt's own test score
    assert [(u["init"], u["pretrain_seed"]) for u in untuned] == [("random", 0), ("ppt", 0)]
    assert untuned[1]["accuracy"] == pytest.approx(evaluate(model, start, test, 8)["accuracy"])


def test_inner_rule_is_the_metapt_prompts_own_then_ppts():
    """The inner protocol adapts every initialisation with one rule, as the meta-objective check
    does: a MetaPT prompt's final alpha and trust region, else PPT's; a number in
    ``meta.inner_lr`` replaces alpha, never the trust region."""
    import dataclasses

    from metapt_core.fewshot.stage import inner_rule
    from metapt_core.specs import EvalSpec, InnerRule

    cfg = config(inits=[InitMethod.RANDOM, InitMethod.PPT])
    spec = EvalSpec.of(cfg, "toy", 4, 0)
    both = dataclasses.replace(spec, protocols=[Protocol.FEWSHOT, Protocol.INNER])
    auto = dataclasses.replace(both, inner=InnerRule("auto", 1))
    metas = {
        "ppt": {"inner_lr": 30.0, "max_step_ratio": 0.5},
        "metapt_maml": {"inner_lr": 0.009, "max_step_ratio": 0.25},
        "ppt_balanced": {"inner_lr": 30.0, "max_step_ratio": 0.5},
    }
    assert inner_rule(auto, metas) == (0.009, 0.25)
    assert inner_rule(auto, {"ppt": metas["ppt"]}) == (30.0, 0.5)
    assert inner_rule(auto, {"ppt": {"inner_lr": 2.0}}) == (2.0, 0.0)  # no trust region recorded
    assert inner_rule(auto, {}) is None
    assert inner_rule(dataclasses.replace(both, inner=InnerRule(0.1, 1)), metas) == (0.1, 0.25)
    assert inner_rule(dataclasses.replace(auto, protocols=[Protocol.FEWSHOT]), metas) is None


def test_inner_protocol_honours_the_trust_region(model: PromptModel, tasks_dir: Path):
    """``inner_ratio`` reaches the inner protocol's SGD step (and only it): a step of alpha 50
    is cut to r times the prompt's norm."""
    spec = EvalSpec.of(config(), "toy", 4, 0)
    start = pretrained(model)[InitMethod.PPT]
    cells = [Cell("toy", InitMethod.PPT, 4, 0, 0, p) for p in (Protocol.FEWSHOT, Protocol.INNER)]
    free = run_cell_group(model, cells, tasks_dir, pretrained(model), spec, 50.0)
    held = run_cell_group(model, cells, tasks_dir, pretrained(model), spec, 50.0, None, 1e-3)
    assert free[0].test_correct == held[0].test_correct  # the Adam protocol is untouched
    fmt = TaskFormat.of("{text} It was {answer}.", ["bad", "good"])
    from metapt_core.fewshot.sampling import sample_split
    from metapt_core.inner_sgd import step_size

    split = sample_split(
        pd.read_parquet(tasks_dir / "toy" / "train.parquet"), ["negative", "positive"], 4, 0
    )
    theta = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        model.loss(theta, encode_rows(model, split.train_rows, fmt)), theta
    )
    size = step_size(grad, start, 50.0, 1e-3)
    assert float(size) < 50.0  # the cap binds
    test = encode_rows(model, pd.read_parquet(tasks_dir / "toy" / "test.parquet"), fmt)
    from metapt_core.fewshot.cells import correct_string
    from metapt_core.fewshot.tuning import predict

    adapted = (start - size * grad).detach()
    assert held[1].test_correct == correct_string(predict(model, adapted, test, 8), test.labels)
    uncapped = (start - 50.0 * grad).detach()
    assert free[1].test_correct == correct_string(predict(model, uncapped, test, 8), test.labels)
