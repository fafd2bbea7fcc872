"""Topic clustering: LDA on bag-of-words, each text joining its most probable topic.

LDA models a document as a mixture ``theta_d`` over topics, each topic a distribution over
words; the cluster of document ``d`` is ``argmax_t theta_{d,t}``. This is the other
unsupervised split the MetaPT paper compares with k-means on embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.decomposition import LatentDirichletAllocation
from sklearn.feature_extraction.text import CountVectorizer

from metapt_core.clustering.density import nearest_centroid
from metapt_core.clustering.terms import STOP_WORDS, TOKEN_PATTERN, preprocess
from metapt_core.errors import DataError

log = logging.getLogger(__name__)


def bag_of_words(texts: Sequence[str], vocab_size: int, min_df: int = 2) -> tuple[Any, list[str]]:
    """Document-term counts over the ``vocab_size`` most frequent words (URLs, @mentions and
    stop words left out).

    Returns:
        (sparse counts ``[N, V]``, the ``V`` words).
    """
    vectorizer = CountVectorizer(
        max_features=vocab_size,
        stop_words=STOP_WORDS,
        token_pattern=TOKEN_PATTERN,
        preprocessor=preprocess,
        min_df=min(min_df, len(texts)),
    )
    try:
        counts = vectorizer.fit_transform(texts)
    except ValueError:  # empty vocabulary
        raise DataError(
            "cluster.lda_vocab_size", vocab_size, "the texts leave no vocabulary"
        ) from None
    return counts, list(vectorizer.get_feature_names_out())


def lda_labels(
    texts: Sequence[str],
    n_topics: int,
    vocab_size: int,
    seed: int,
    vectors: np.ndarray | None = None,
) -> tuple[np.ndarray, int]:
    """Cluster texts by their most probable LDA topic.

    Texts with no vocabulary word have a flat topic mixture (argmax would put them all in topic
    0); they instead join the topic whose centroid in ``vectors`` (the sentence embeddings) is
    nearest, or topic 0 when no vectors are given.

    Args:
        texts: ``N`` strings.
        n_topics: number of topics (clusters).
        vocab_size: words kept in the bag-of-words.
        seed: LDA random state.
        vectors: optional ``[N, D]`` embeddings for empty documents.

    Returns:
        (int64 labels ``[N]``, number of empty documents reassigned).
    """
    counts, _ = bag_of_words(texts, vocab_size)
    lda = LatentDirichletAllocation(
        n_components=n_topics,
        random_state=seed,
        learning_method="online" if len(texts) > 2000 else "batch",
        max_iter=20,
        batch_size=512,
    )
    theta = lda.fit_transform(counts)
    labels = np.asarray(theta.argmax(axis=1), dtype=np.int64)
    empty = np.asarray(counts.sum(axis=1)).ravel() == 0
    n_empty = int(empty.sum())
    if n_empty and vectors is not None and n_empty < len(texts):
        provisional = labels.copy()
        provisional[empty] = -1
        labels[empty] = nearest_centroid(np.flatnonzero(empty), provisional, vectors)
    log.info("cluster: LDA %d topics, %d texts without vocabulary reassigned", n_topics, n_empty)
    return labels, n_empty
