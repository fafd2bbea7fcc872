"""The choices of the configuration: one ``Enum(str)`` per setting that picks among options."""

from __future__ import annotations

from enum import Enum


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
