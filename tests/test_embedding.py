"""Sentence embedding: length-sorted batching un-permuted, normalisation, files on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from _tweets import tweet_pool, write_pool

from metapt_core.config import EmbedConfig
from metapt_core.embedding import (
    embed_pool,
    embed_texts,
    length_order,
    load_embedder,
    read_embeddings,
    read_pool,
    resolve_device,
)
from metapt_core.errors import ConfigError, DataError
from metapt_core.store import ArtifactRef


@pytest.fixture(scope="module")
def embedder(embed_assets_dir: Path):
    return load_embedder("builtin:all-MiniLM-L6-v2", embed_assets_dir, "cpu", 128)


@pytest.fixture(scope="module")
def tweets(embed_assets_dir: Path) -> pd.DataFrame:
    return tweet_pool(embed_assets_dir, 60, seed=1)


def test_length_order_is_longest_first_and_stable() -> None:
    order = length_order(["ab", "abcd", "xy", "a", "abcd"])
    assert order.tolist() == [1, 4, 0, 2, 3]


def test_embed_texts_matches_unsorted_reference_in_input_order(embedder, tweets) -> None:
    texts = tweets["text"].tolist()
    got = embed_texts(texts, embedder, batch_size=16)
    # Reference: one text at a time, so no padding or sorting can be involved.
    reference = np.stack(
        [
            embedder.encode([t], normalize_embeddings=True, convert_to_numpy=True)[0]
            for t in texts[:8]
        ]
    )
    assert got.dtype == np.float32 and got.shape == (len(texts), 384)
    np.testing.assert_allclose(got[:8], reference, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # Shuffling the input permutes the output rows the same way.
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = embed_texts([texts[i] for i in perm], embedder, batch_size=16)
    np.testing.assert_allclose(shuffled, got[perm], atol=2e-5)


def test_normalisation_is_applied_by_embed_texts(embedder, tweets) -> None:
    from sentence_transformers import SentenceTransformer

    # all-MiniLM-L6-v2 ends in a Normalize module; without it the raw norms show.
    unnormalised = SentenceTransformer(modules=[embedder[0], embedder[1]], device="cpu")
    texts = tweets["text"].tolist()[:8]
    raw = embed_texts(texts, unnormalised, batch_size=4, normalize=False)
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1.0) > 1e-2)
    unit = embed_texts(texts, unnormalised, batch_size=4, normalize=True)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)


def test_embed_texts_reports_progress_and_handles_empty(embedder, tweets) -> None:
    seen: list[tuple[int, int]] = []
    embed_texts(
        tweets["text"].tolist()[:20],
        embedder,
        batch_size=2,
        progress=lambda d, t, m: seen.append((d, t)),
    )
    # Chunks of 8 batches of 2: progress after 16 and after 20 texts.
    assert seen == [(16, 20), (20, 20)]
    assert embed_texts([], embedder).shape == (0, 384)


class Killed(Exception):
    """Stands for the process dying after some chunks were saved."""


def test_a_killed_embedding_resumes_from_its_chunks_bit_for_bit(embedder, tweets, tmp_path) -> None:
    texts = tweets["text"].tolist()[:40]  # chunks of 8 batches of 2: 16 + 16 + 8 rows
    whole = embed_texts(texts, embedder, batch_size=2)
    calls: list[int] = []
    real_encode = embedder.encode

    def counting(batch, **kwargs):
        calls.append(len(batch))
        return real_encode(batch, **kwargs)

    def die_after_two(done: int, total: int, message: str) -> None:
        if done >= 32:
            raise Killed

    chunks = tmp_path / "out.chunks"
    embedder.encode = counting
    try:
        with pytest.raises(Killed):
            embed_texts(texts, embedder, 2, progress=die_after_two, resume_dir=chunks, identity="m")
        assert calls == [16, 16] and len(list(chunks.glob("*.npy"))) == 2
        calls.clear()
        resumed = embed_texts(texts, embedder, 2, resume_dir=chunks, identity="m")
        assert calls == [8]  # only the missing chunk is encoded
        assert np.array_equal(resumed, whole)
        calls.clear()  # other settings (or texts): the chunks are not reused
        embed_texts(texts, embedder, 2, resume_dir=chunks, identity="other model")
        assert calls == [16, 16, 8]
    finally:
        embedder.encode = real_encode


def test_embed_pool_writes_vectors_next_to_row_ids(embed_assets_dir, tweets, tmp_path) -> None:
    pool_path = write_pool(tweets.iloc[:50], tmp_path / "pool")
    cfg = EmbedConfig(batch_size=8, device="cpu")
    calls: list[int] = []
    result = embed_pool(
        ArtifactRef.of(pool_path),
        cfg,
        embed_assets_dir,
        tmp_path / "embed",
        lambda d, t, m: calls.append(d),
    )
    vectors, row_ids = read_embeddings(result.ref)
    assert row_ids == tweets["row_id"].iloc[:50].tolist()
    assert vectors.shape == (50, 384) and vectors.dtype == np.float32
    assert pq.read_table(tmp_path / "embed" / "row_ids.parquet").column_names == ["row_id"]
    assert result.ref.is_valid() and calls[-1] == 50
    assert result.stats["n_rows"] == 50 and result.stats["device"] == "cpu"
    assert not list(tmp_path.glob("embed.tmp-*"))
    assert not (tmp_path / "embed.chunks").exists()  # resume chunks go with success
    # Row i's vector is the embedding of row i's text.
    model = load_embedder("builtin:all-MiniLM-L6-v2", embed_assets_dir, "cpu")
    np.testing.assert_allclose(
        vectors[7], embed_texts([tweets["text"].iloc[7]], model)[0], atol=2e-5
    )


def test_bad_inputs_raise_one_line_errors(tmp_path) -> None:
    assert resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(ConfigError, match="embed.device"):
        resolve_device("not-a-device")
    bad = write_pool(
        pd.DataFrame(
            {"row_id": ["a"], "label": ["x"], "label_id": [0], "source": ["s"], "text": ["t"]}
        ).drop(columns="text"),
        tmp_path,
    )
    with pytest.raises(DataError, match="text"):
        read_pool(bad)
    with pytest.raises(DataError, match="not found"):
        read_pool(tmp_path / "missing")


@pytest.mark.gpu
def test_fp16_on_cuda_is_close_to_cpu(embed_assets_dir, tweets) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    texts = tweets["text"].tolist()[:64]
    cpu = embed_texts(texts, load_embedder("builtin:all-MiniLM-L6-v2", embed_assets_dir, "cpu"))
    gpu = embed_texts(texts, load_embedder("builtin:all-MiniLM-L6-v2", embed_assets_dir, "cuda"))
    assert gpu.dtype == np.float32
    assert float((cpu * gpu).sum(axis=1).min()) > 0.999
