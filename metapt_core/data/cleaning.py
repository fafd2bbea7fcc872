"""Explicit text cleaning rules, each counted (``CleaningConfig``).

Applied in this order; a rule that is switched off counts 0:

1. ``fix_encoding``: repair UTF-8 read as Latin-1/CP-1252 (mojibake such as ``Ã©`` for ``é``,
   ``â€™`` for ``’``) by re-encoding when that decodes cleanly and removes the debris; remove
   runs of lossy-re-encoding debris (two or more consecutive Latin-1-supplement characters or
   U+FFFD, ``_`` allowed between them, or a ``Õ`` followed by non-ASCII or ``_`` characters, as
   in ``GoogleÕ¢_Î_¢s`` or ``äóì@user``); unescape HTML entities (``&amp;``); drop control
   characters (Unicode category Cc except whitespace,
   and the U+FFFD replacement character); NFC-normalise. Counted as rows changed.
2. ``strip``: trim the ends and collapse runs of whitespace (tabs, newlines) to one space.
3. ``drop_empty``: drop rows whose text is empty.
4. ``min_chars``: drop texts shorter than this many characters (``too_short``).
5. ``max_chars``: drop texts longer than this (``too_long``; dropped, never truncated).
6. ``drop_duplicates``: keep the first row of each :func:`normalize_text` value.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from metapt_core.config import CleaningConfig

_MOJIBAKE = re.compile(
    "[ÃÂâ][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]"
)
# Runs like "Õ¢_\x8aÎ_\x86¢" or "_\ufffd_": emoji and smart quotes that went through a lossy
# re-encoding (the CrowdFlower tweets are full of them); nothing recoverable is left in them.
# Two Latin-1 symbols/letters in a row almost never occur in real text, but are typical debris.
_DEBRIS = re.compile("_*(?:[\u0080-\u00ff\ufffd]_*){2,}|_*[\u00d5\ufffd][_\u0080-\uffff]*")
_SPACES = re.compile(r"\s+")
_NON_WORD = re.compile(r"[\W_]+")

RULES = ("fixed_encoding", "stripped", "empty", "too_short", "too_long", "duplicate")


def _repair_mojibake(text: str) -> str:
    """Undo one round of UTF-8-decoded-as-Latin-1/CP-1252 if it decodes and shrinks the debris."""
    if not _MOJIBAKE.search(text):
        return text
    raw = bytearray()
    for ch in text:
        # CP-1252 where it defines the byte, Latin-1 for the five bytes it leaves undefined.
        try:
            raw += ch.encode("cp1252")
        except UnicodeEncodeError:
            if ord(ch) > 0xFF:
                return text
            raw.append(ord(ch))
    try:
        fixed = raw.decode("utf-8")
    except UnicodeDecodeError:
        return text
    return fixed if len(_MOJIBAKE.findall(fixed)) < len(_MOJIBAKE.findall(text)) else text


def fix_encoding(text: str) -> str:
    """Repair mojibake, unescape HTML entities, drop control characters, NFC-normalise."""
    text = _repair_mojibake(text)
    text = _DEBRIS.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    # Control characters and U+FFFD are what is left of bytes that never were text.
    text = "".join(
        ch for ch in text if ch != "\ufffd" and (ch.isspace() or unicodedata.category(ch) != "Cc")
    )
    return unicodedata.normalize("NFC", text)


def normalize_text(text: str) -> str:
    """The comparison key for duplicates and leakage: NFKC, case-folded, words only."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    words = _NON_WORD.sub(" ", folded).strip()
    # A text of only symbols (":)") keeps its symbols, or every such text would collide.
    return words or _SPACES.sub(" ", folded).strip()


@dataclass
class CleanResult:
    """Positions kept (into the input), their cleaned texts, and the count per rule."""

    keep: list[int]
    texts: list[str]
    counts: dict[str, int] = field(default_factory=dict)


def clean_texts(
    texts: Sequence[str | None], cfg: CleaningConfig, seen: set[str] | None = None
) -> CleanResult:
    """Apply the cleaning rules of ``cfg`` in order, counting each.

    Args:
        texts: raw texts (None counts as empty).
        cfg: the cleaning rules.
        seen: normalised texts already kept elsewhere (duplicates across sources); updated.

    Returns:
        The kept positions, their cleaned texts, and ``counts[rule]`` for every rule in ``RULES``.
    """
    counts = dict.fromkeys(RULES, 0)
    seen = set() if seen is None else seen
    keep: list[int] = []
    out: list[str] = []
    for pos, raw in enumerate(texts):
        # A missing value (None, or a float NaN from JSON/Parquet) is an empty text, never "nan".
        text = "" if raw is None or (isinstance(raw, float) and raw != raw) else str(raw)
        if cfg.fix_encoding:
            fixed = fix_encoding(text)
            counts["fixed_encoding"] += fixed != text
            text = fixed
        if cfg.strip:
            stripped = _SPACES.sub(" ", text).strip()
            counts["stripped"] += stripped != text
            text = stripped
        if cfg.drop_empty and not text.strip():
            counts["empty"] += 1
            continue
        if len(text) < cfg.min_chars:
            counts["too_short"] += 1
            continue
        if len(text) > cfg.max_chars:
            counts["too_long"] += 1
            continue
        if cfg.drop_duplicates:
            key = normalize_text(text)
            if key in seen:
                counts["duplicate"] += 1
                continue
            seen.add(key)
        keep.append(pos)
        out.append(text)
    return CleanResult(keep, out, counts)
