"""The text side of keyword search, shared by the search and its snippets: the terms of a
query (:func:`query_terms`), the FTS5 expression that matches them (:func:`fts_query`),
and snippets with their highlight markers (:func:`parse_snippet`). No SQL."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Markers FTS5's snippet() puts around matched terms; parse_snippet() turns them into offsets.
SNIPPET_OPEN = "\x02"
SNIPPET_CLOSE = "\x03"
SNIPPET_ELLIPSIS = "…"
SNIPPET_TOKENS = 16  # the most tokens snippet() returns

# Distinct terms kept from one query: more add nothing to a natural-language query's
# ranking and make FTS5 walk more posting lists. The rest are ignored.
MAX_TERMS = 64

# Common English words dropped from a query when it has any other term: FTS5 has no
# stopword list, and with few documents (where BM25's IDF says little) a match on "the"
# or "for" would count as much as one on "shoes". Words that are also nouns a query may
# mean ("it", "us", "can", "will", "may") are kept.
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is its itself just me
    more most my myself no nor not of off on once only or other our ours ourselves out over own
    same she should so some such than that the their theirs them themselves then there these they
    this those through to too under until up very was we were what when where which while who
    whom why with would you your yours yourself yourselves
    """.split()
)


def is_token_char(ch: str) -> bool:
    """Whether unicode61 (default options) keeps ``ch`` in a token: letters, digits,
    private use; combining marks are kept too, so that a term's diacritics stay with it."""
    cat = unicodedata.category(ch)
    return cat[0] in "LNM" or cat == "Co"


def _clean(text: str) -> str:
    """Control characters and lone surrogates become spaces: SQLite reads a bound string
    only up to a NUL (an unterminated FTS5 string), and a surrogate cannot be encoded."""
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text)


def _strip_edges(term: str) -> str:
    start, end = 0, len(term)
    while start < end and not is_token_char(term[start]):
        start += 1
    while end > start and not is_token_char(term[end - 1]):
        end -= 1
    return term[start:end]


def query_terms(text: str) -> list[str]:
    """The terms :func:`fts_query` searches for: whitespace-separated words of ``text``
    without separator characters at their edges, distinct (ignoring case), without
    English stopwords when any other term remains, at most :data:`MAX_TERMS`."""
    terms: list[str] = []
    seen: set[str] = set()
    for raw in _clean(text).split():
        term = _strip_edges(raw)
        key = term.lower()
        if not term or key in seen:
            continue
        seen.add(key)
        terms.append(term)
    content = [t for t in terms if t.lower() not in STOPWORDS]
    return (content or terms)[:MAX_TERMS]


def fts_query(text: str) -> str | None:
    """A safe FTS5 MATCH expression for any user text, or None when it has no term.

    Every term is an FTS5 string (``"..."``, an inner ``"`` doubled), so nothing in it is
    an operator; a term the tokenizer splits further (``t-shirt``) is matched as a
    phrase. The terms are joined with OR.
    """
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)


@dataclass(frozen=True)
class KeywordHit:
    """One keyword match: the document's id, its score (higher is better: ``-bm25`` on
    SQLite, ``ts_rank_cd`` on PostgreSQL, so scores of the two are not comparable), and a
    plain-text snippet with ``highlights``, (start, end) character offsets of the matched
    terms in it (empty with ``snippets=False``)."""

    id: int
    score: float
    snippet: str
    highlights: tuple[tuple[int, int], ...]


_MARKERS = re.compile(f"([{SNIPPET_OPEN}{SNIPPET_CLOSE}])")


def parse_snippet(marked: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Split the output of FTS5 ``snippet()`` (or PostgreSQL's ``ts_headline``, with the
    same markers) into plain text and highlight offsets.

    A marker without its pair (the document's own text may hold a \\x02 or \\x03) is
    dropped; offsets always lie within the returned text and never overlap.
    """
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    start: int | None = None  # where the open highlight began
    for piece in _MARKERS.split(marked):
        if piece in (SNIPPET_OPEN, SNIPPET_CLOSE):
            if start is not None and length > start:
                spans.append((start, length))
            start = length if piece == SNIPPET_OPEN else None
        elif piece:
            parts.append(piece)
            length += len(piece)
    if start is not None and length > start:
        spans.append((start, length))
    return "".join(parts), tuple(spans)
