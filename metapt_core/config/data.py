"""The data sections: a data source, the cleaning rules, the pre-training pool, a target task."""

from __future__ import annotations

from dataclasses import dataclass, field

from metapt_core.config.checks import _fraction, _non_negative, _positive
from metapt_core.config.enums import SourceFormat
from metapt_core.errors import ConfigError


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
class TargetTaskConfig:
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
