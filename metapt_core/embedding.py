"""Sentence embedding of the pool with sentence-transformers, written to disk next to row ids.

The default embedder is the bundled all-MiniLM-L6-v2 (``builtin:all-MiniLM-L6-v2``); any
sentence-transformers model name or local folder works. Texts are embedded in order of length
(so a batch pads little), then put back in pool order. Vectors are L2-normalised when
``embed.normalize`` is set, so a dot product is a cosine similarity:
``e_i = f(x_i) / ||f(x_i)||_2``.

Output folder (``embed_pool``): ``embeddings.npy`` (float32, ``[N, D]``, rows in
``pool.parquet`` order), ``row_ids.parquet`` (one ``row_id`` column, same order) and
``embed.json`` (model, dimension, device, settings).

Resumable: with a ``resume_dir`` every chunk of ``batch_size * 8`` length-sorted texts is saved
there as it is done (``<start>.npy``, under a fingerprint of the texts, model and settings); a
run killed midway and started again encodes only the chunks that are missing, and the result is
the uninterrupted run's, bit for bit (the same batches). ``embed_pool`` keeps them in
``<out_dir>.chunks`` and removes them once the output is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metapt_core.config import EmbedConfig
from metapt_core.errors import ConfigError, DataError
from metapt_core.store import ArtifactRef, atomic_path, atomic_write_text

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

EMBEDDINGS_FILE = "embeddings.npy"
ROW_IDS_FILE = "row_ids.parquet"
INFO_FILE = "embed.json"
POOL_FILE = "pool.parquet"
# Texts handed to sentence-transformers per call: large enough to keep its batching efficient,
# small enough that progress is reported every few seconds on a CPU.
_CHUNK_BATCHES = 8


@dataclass
class EmbedResult:
    """The embedding stage's output: a reference to its folder and plain stats for tracking."""

    ref: ArtifactRef
    stats: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is checked and returned.

    Raises:
        ConfigError: ``cuda`` is asked for but not available, or the name is not a device.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except (RuntimeError, ValueError):
        raise ConfigError("embed.device", device, "is not a torch device name") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("embed.device", device, "CUDA is not available on this machine")
    return device


def load_embedder(
    model: str, assets_dir: str | Path, device: str = "auto", max_seq_length: int = 128
) -> SentenceTransformer:
    """Load a sentence-transformers model (``builtin:`` names resolved under ``assets_dir``).

    On CUDA the weights are cast to fp16 (embeddings are returned as float32 regardless).
    """
    from sentence_transformers import SentenceTransformer

    from metapt_core.assets import resolve_model  # lazy: assets is a sibling stage

    path = resolve_model(model, assets_dir, field="embed.model")
    dev = resolve_device(device)
    try:
        embedder = SentenceTransformer(path, device=dev)
    except (OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError("embed.model", model, f"cannot be loaded ({first})") from None
    embedder.max_seq_length = max_seq_length
    if dev.startswith("cuda"):
        embedder.half()
    return embedder


def length_order(texts: Sequence[str]) -> np.ndarray:
    """Indices that sort ``texts`` by decreasing character length (stable, so deterministic).

    Returns:
        int64 permutation ``[N]``; ``texts[order[0]]`` is the longest.
    """
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    return np.argsort(-lengths, kind="stable")


def embed_texts(
    texts: Sequence[str],
    model: SentenceTransformer,
    batch_size: int = 128,
    normalize: bool = True,
    progress: Progress | None = None,
    resume_dir: str | Path | None = None,
    identity: str = "",
) -> np.ndarray:
    """Embed texts in length-sorted batches and return them in the input order.

    Args:
        texts: ``N`` strings.
        model: a loaded sentence-transformers model.
        batch_size: texts per forward pass.
        normalize: L2-normalise each vector (``e / ||e||``).
        progress: called as ``progress(done, N, message)``.
        resume_dir: keep each finished chunk here and reuse the chunks found (module doc).
        identity: what else the vectors depend on (model name, device, settings), folded into
            the chunks' fingerprint.

    Returns:
        float32 array ``[N, D]``; row ``i`` embeds ``texts[i]``.
    """
    n = len(texts)
    # sentence-transformers 6 renamed the method; 5.x only has the old name.
    get_dim = (
        getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    )
    dim = int(get_dim() or 0)
    if n == 0:
        return np.zeros((0, dim), dtype=np.float32)
    order = length_order(texts)
    sorted_texts = [texts[i] for i in order]
    chunk = batch_size * _CHUNK_BATCHES
    chunks = _ChunkDir(resume_dir, sorted_texts, f"{identity}|{batch_size}|{normalize}|{dim}")
    parts: list[np.ndarray] = []
    resumed = 0
    for start in range(0, n, chunk):
        batch = sorted_texts[start : start + chunk]
        vectors = chunks.load(start, len(batch), dim)
        if vectors is None:
            encoded = model.encode(
                batch,
                batch_size=batch_size,
                convert_to_numpy=True,
                normalize_embeddings=normalize,
                show_progress_bar=False,
            )
            vectors = np.asarray(encoded, dtype=np.float32)
            chunks.save(start, vectors)
        else:
            resumed += len(batch)
        parts.append(vectors)
        if progress:
            progress(min(start + chunk, n), n, "embedding")
    if resumed:
        log.info("embed: resumed %d of %d rows from %s", resumed, n, resume_dir)
    embedded = np.concatenate(parts, axis=0)
    # Un-permute: the row embedded at sorted position j belongs to input row order[j].
    out = np.empty_like(embedded)
    out[order] = embedded
    return out


class _ChunkDir:
    """Finished chunks of one embedding run on disk (nothing when ``root`` is None).

    ``fingerprint.txt`` holds sha256 over the sorted texts and ``identity``; chunks under another
    fingerprint are cleared rather than reused.
    """

    def __init__(self, root: str | Path | None, texts: Sequence[str], identity: str) -> None:
        self.root = Path(root) if root is not None else None
        if self.root is None:
            return
        digest = hashlib.sha256(identity.encode())
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        fingerprint = digest.hexdigest()
        stamp = self.root / "fingerprint.txt"
        if stamp.is_file() and stamp.read_text("utf-8").strip() != fingerprint:
            shutil.rmtree(self.root)
        if not stamp.is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            atomic_write_text(stamp, fingerprint + "\n")

    def _file(self, start: int) -> Path:
        assert self.root is not None
        return self.root / f"{start:012d}.npy"

    def load(self, start: int, rows: int, dim: int) -> np.ndarray | None:
        """The saved chunk starting at sorted position ``start``, if whole; else None."""
        if self.root is None or not self._file(start).is_file():
            return None
        try:
            vectors = np.load(self._file(start), allow_pickle=False)
        except (OSError, ValueError):
            return None
        if vectors.shape != (rows, dim) or vectors.dtype != np.float32:
            return None
        return vectors

    def save(self, start: int, vectors: np.ndarray) -> None:
        if self.root is None:
            return
        with atomic_path(self._file(start)) as tmp, open(tmp, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)


def pool_file(pool_ref: ArtifactRef | str | Path) -> Path:
    """The ``pool.parquet`` a reference points at (the file itself or its folder)."""
    path = Path(pool_ref.path if isinstance(pool_ref, ArtifactRef) else pool_ref)
    return path / POOL_FILE if path.is_dir() else path


def read_pool(pool_ref: ArtifactRef | str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the pool's rows, checking that ``row_id`` and ``text`` are there and not empty.

    Raises:
        DataError: the file is missing, unreadable, empty or lacks a needed column.
    """
    path = pool_file(pool_ref)
    if not path.is_file():
        raise DataError("pool_ref", str(path), "pool.parquet not found")
    try:
        frame = pq.read_table(path, columns=columns).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DataError("pool_ref", str(path), f"cannot be read as Parquet ({exc})") from None
    for column in ("row_id", "text"):
        if column not in frame.columns:
            raise DataError("pool_ref", str(path), f"has no {column!r} column")
    if frame.empty:
        raise DataError("pool_ref", str(path), "holds no rows")
    if frame["text"].isna().any():
        raise DataError("pool_ref", str(path), "has missing texts")
    return frame


def embed_pool(
    pool_ref: ArtifactRef,
    cfg: EmbedConfig,
    assets_dir: str | Path,
    out_dir: str | Path,
    progress: Progress | None = None,
) -> EmbedResult:
    """Embed every row of ``pool.parquet`` and write the vectors next to the row ids.

    Args:
        pool_ref: the ingested pool (``pool.parquet`` or its folder).
        cfg: embedding settings (model, batch size, max length, normalisation, device).
        assets_dir: where ``builtin:`` models are prepared.
        out_dir: the stage's folder, written atomically.
        progress: called as ``progress(done, total, message)``.

    Returns:
        ``EmbedResult`` whose ``ref`` fingerprints ``out_dir``; ``stats`` holds ``n_rows``,
        ``dim``, ``device``, ``seconds`` and ``sentences_per_s``.
    """
    frame = read_pool(pool_ref, columns=["row_id", "text"])
    texts = frame["text"].astype(str).tolist()
    device = resolve_device(cfg.device)
    log.info("embed: %d rows with %s on %s", len(texts), cfg.model, device)
    model = load_embedder(cfg.model, assets_dir, device, cfg.max_seq_length)
    start = time.perf_counter()
    out = Path(out_dir)
    chunks = out.parent / f"{out.name}.chunks"  # beside the output: kept if this run is killed
    identity = f"{cfg.model}|{device}|{cfg.max_seq_length}"
    vectors = embed_texts(texts, model, cfg.batch_size, cfg.normalize, progress, chunks, identity)
    seconds = time.perf_counter() - start
    if not np.isfinite(vectors).all():
        raise DataError("embed.model", cfg.model, "produced non-finite embeddings")
    stats: dict[str, Any] = {
        "n_rows": len(texts),
        "dim": int(vectors.shape[1]),
        "model": cfg.model,
        "device": device,
        "dtype": "float16" if device.startswith("cuda") else "float32",
        "normalize": cfg.normalize,
        "max_seq_length": cfg.max_seq_length,
        "batch_size": cfg.batch_size,
        "seconds": round(seconds, 3),
        "sentences_per_s": round(len(texts) / seconds, 1) if seconds > 0 else None,
    }
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        with open(tmp / EMBEDDINGS_FILE, "wb") as handle:
            np.save(handle, vectors, allow_pickle=False)
        ids = pa.table({"row_id": pa.array(frame["row_id"].astype(str).tolist(), pa.string())})
        pq.write_table(ids, tmp / ROW_IDS_FILE)
        (tmp / INFO_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n", "utf-8")
    shutil.rmtree(chunks, ignore_errors=True)
    log.info(
        "embed: wrote %d x %d in %.1f s (%.0f sentences/s)",
        len(texts),
        stats["dim"],
        seconds,
        stats["sentences_per_s"] or 0.0,
    )
    return EmbedResult(ref=ArtifactRef.of(out), stats=stats)


def read_embeddings(embed_ref: ArtifactRef | str | Path) -> tuple[np.ndarray, list[str]]:
    """Read an embedding folder written by :func:`embed_pool`.

    Returns:
        (float32 ``[N, D]`` vectors, ``N`` row ids in the same order).

    Raises:
        DataError: a file is missing or the two disagree on the number of rows.
    """
    folder = Path(embed_ref.path if isinstance(embed_ref, ArtifactRef) else embed_ref)
    vec_path, ids_path = folder / EMBEDDINGS_FILE, folder / ROW_IDS_FILE
    for needed in (vec_path, ids_path):
        if not needed.is_file():
            raise DataError("embed_ref", str(folder), f"has no {needed.name}")
    vectors = np.load(vec_path, allow_pickle=False).astype(np.float32, copy=False)
    row_ids = pq.read_table(ids_path, columns=["row_id"]).column("row_id").to_pylist()
    if vectors.ndim != 2 or vectors.shape[0] != len(row_ids):
        raise DataError(
            "embed_ref", str(folder), f"{vectors.shape} vectors for {len(row_ids)} row ids"
        )
    return vectors, [str(r) for r in row_ids]
