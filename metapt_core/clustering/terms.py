"""The most distinctive terms of each cluster by class-based TF-IDF (c-TF-IDF, as in BERTopic).

All texts of a cluster are one document. With ``tf_{t,c}`` the count of term t in cluster c,
``f_t = sum_c tf_{t,c}`` and ``A`` the mean number of words per cluster:

    W_{t,c} = (tf_{t,c} / sum_t' tf_{t',c}) * log(1 + A / f_t)

A term scores high when it is frequent in the cluster and rare over the whole pool.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, CountVectorizer

# Words of two or more letters: no digits, no underscores, no one-letter fragments.
TOKEN_PATTERN = r"(?u)\b[^\W\d_][^\W\d_]+\b"
# URLs and @mentions name no topic (a user name would otherwise top its cluster).
_NOISE = re.compile(r"https?://\S+|www\.\S+|@\w+")
# English stop words plus the boilerplate of tweets and web text.
STOP_WORDS = sorted(ENGLISH_STOP_WORDS | {"rt", "amp", "http", "https", "www", "com", "via"})


def preprocess(text: str) -> str:
    """Lower-case ``text`` and remove URLs and @mentions before counting words."""
    return _NOISE.sub(" ", text.lower())


def ctfidf(counts: np.ndarray) -> np.ndarray:
    """c-TF-IDF weights of a cluster-by-term count matrix.

    Args:
        counts: ``[C, V]`` term counts per cluster.

    Returns:
        float64 ``[C, V]`` weights ``W_{t,c}`` (module doc); rows of empty clusters are zero.
    """
    counts = np.asarray(counts, dtype=np.float64)
    per_cluster = counts.sum(axis=1, keepdims=True)
    tf = np.divide(counts, per_cluster, out=np.zeros_like(counts), where=per_cluster > 0)
    term_total = counts.sum(axis=0)
    avg_words = counts.sum(axis=1).mean()
    idf = np.log(
        1.0 + np.divide(avg_words, term_total, out=np.zeros_like(term_total), where=term_total > 0)
    )
    return tf * idf[None, :]


def top_terms(
    texts: Sequence[str],
    labels: np.ndarray,
    top_n: int = 10,
    stop_words: Sequence[str] | None = tuple(STOP_WORDS),
    ngram_range: tuple[int, int] = (1, 1),
) -> dict[int, list[str]]:
    """The ``top_n`` highest c-TF-IDF terms of every cluster.

    Args:
        texts: ``N`` strings.
        labels: int ``[N]`` cluster ids; ``-1`` rows are left out.
        top_n: terms per cluster.
        stop_words: words never counted (default: English and tweet boilerplate).
        ngram_range: word n-grams counted.

    Returns:
        ``{cluster: [term, ...]}`` best first; ties broken alphabetically; zero-weight terms left out.
    """
    labels = np.asarray(labels)
    keep = labels >= 0
    clusters = [int(c) for c in np.unique(labels[keep])]
    if not clusters:
        return {}
    docs = [" ".join(t for t, lab in zip(texts, labels) if lab == c) for c in clusters]
    vectorizer = CountVectorizer(
        stop_words=list(stop_words) if stop_words else None,
        token_pattern=TOKEN_PATTERN,
        preprocessor=preprocess,
        ngram_range=ngram_range,
    )
    try:
        counts = vectorizer.fit_transform(docs).toarray()
    except ValueError:  # no word in any cluster
        return {c: [] for c in clusters}
    vocab = np.asarray(vectorizer.get_feature_names_out())
    weights = ctfidf(counts)
    out: dict[int, list[str]] = {}
    for row, cluster in enumerate(clusters):
        # vocab is sorted, so a stable sort on -weight breaks ties alphabetically.
        order = np.argsort(-weights[row], kind="stable")
        out[cluster] = [str(vocab[i]) for i in order[:top_n] if weights[row, i] > 0]
    return out
