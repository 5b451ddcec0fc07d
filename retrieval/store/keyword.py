"""Keyword search: SQLite's FTS5 index of revision 0002, PostgreSQL's tsvector column of 0003.

On SQLite, ``documents_fts`` indexes ``documents.text`` with the ``porter unicode61
remove_diacritics 2`` tokenizer (English stemming, case and diacritics folded) and is kept
in step by triggers, so a keyword search sees exactly the documents of the caller's
snapshot: a document is found the moment its write commits, whoever wrote it.

On PostgreSQL, ``documents.text_search`` is a generated column,
``to_tsvector('english', text)`` (Snowball English stemming, case folded, English
stopwords dropped; diacritics are kept), with a GIN index: it is computed in the writing
transaction, whichever program writes, so it can never be stale either. A search ranks
by ``ts_rank_cd`` (cover density, divided by the logarithm of the document's length, as
BM25 also favours short documents; there is no IDF) and ``ts_headline`` writes the
snippets.

User text never reaches a query syntax. On SQLite :func:`fts_query` turns every term
into an FTS5 string, so operators (AND, OR, NOT, NEAR, ``*``, ``^``, ``:``, ``-``, ``+``),
quotes and brackets in a query are plain text; on PostgreSQL every term is a bound
parameter of ``phraseto_tsquery``, which reads any text as words (see :func:`ts_query`).
Either way the terms (:func:`query_terms`) are joined with OR: a natural-language query
ranks documents by how well they match any of its terms.

Snippets are computed for a search's final hits only (:func:`keyword_snippets`). A large
document's snippet is FTS5's snippet() (or ts_headline) of a window of a few KB around its
first match, found by a scan at C speed, never of the whole text: snippet() takes time
that grows with the square of a document's matches (41 s for 1 MB).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, reduce
from itertools import chain, islice
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    LargeBinary,
    Text,
    bindparam,
    case,
    cast,
    column,
    func,
    literal,
    literal_column,
    select,
    table,
)
from sqlalchemy.dialects.postgresql import TSQUERY, TSVECTOR
from sqlalchemy.sql.elements import ColumnElement

from retrieval.store.models import Base

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


def _is_token_char(ch: str) -> bool:
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
    while start < end and not _is_token_char(term[start]):
        start += 1
    while end > start and not _is_token_char(term[end - 1]):
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


_DOCS = Base.metadata.tables["documents"]
_FTS = table("documents_fts", column("rowid", Integer))
# The hidden column named as the table: the left side of MATCH, the first argument of
# the auxiliary functions bm25() and snippet().
_FTS_TABLE: ColumnElement[Any] = literal_column("documents_fts")
_RANK = func.bm25(_FTS_TABLE, type_=Float).label("kw_rank")
_SNIPPET = func.snippet(
    _FTS_TABLE,
    literal(0),
    literal(SNIPPET_OPEN),
    literal(SNIPPET_CLOSE),
    literal(SNIPPET_ELLIPSIS),
    literal(SNIPPET_TOKENS),
).label("kw_snippet")
_MATCHES = (
    select(_DOCS.c.id, _RANK)
    .select_from(_FTS.join(_DOCS, _DOCS.c.id == _FTS.c.rowid))
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")))
    .order_by(_RANK, _DOCS.c.id)
)
# Without a filter the join is not needed (the triggers keep every indexed row a
# document): it halves a search whose terms match many documents, as each match would
# otherwise read its row (11.8 against 23.8 ms p50 on the 100,000-document catalog).
_MATCHES_ONLY = (
    select(_FTS.c.rowid, _RANK)
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")))
    .order_by(_RANK, _FTS.c.rowid)
)


# -- PostgreSQL -----------------------------------------------------------------------

# Revision 0003's generated column, left out of the models (retrieval/migrations/env.py skips it).
_TEXT_SEARCH: ColumnElement[Any] = literal_column("documents.text_search", TSVECTOR)
_ENGLISH: ColumnElement[Any] = literal_column("'english'::regconfig")  # as the column is computed
# ts_rank_cd's normalisation 1: the rank divided by ln(1 + the document's length in
# lexemes), so that, as with BM25, one match in a short document beats one in a long one.
TS_RANK_NORMALISATION = 1
# ts_headline: one fragment of at most SNIPPET_TOKENS words around the best cover, as
# FTS5's snippet() gives; ts_headline adds no ellipsis, _headline() does.
HEADLINE_OPTIONS = (f"StartSel={SNIPPET_OPEN}, StopSel={SNIPPET_CLOSE}, MaxWords={SNIPPET_TOKENS}, "
                    f"MinWords={SNIPPET_TOKENS // 2}, MaxFragments=1")


def ts_query(text: str) -> ColumnElement[Any] | None:
    """A PostgreSQL tsquery for any user text, or None when it has no term.

    ``phraseto_tsquery('english', :term)`` per term of :func:`query_terms`, joined with
    ``||`` (OR). Every term is a bound parameter, and phraseto_tsquery reads its text as
    words, never as tsquery syntax; a term the parser splits further (``t-shirt``) is
    matched as a phrase, as on SQLite. A term made of stopwords only (``the``, ``not``)
    gives an empty tsquery, which matches nothing (PostgreSQL sends a NOTICE): the
    column holds no stopwords. Terms are NFC-normalised, as stored texts usually are
    (``to_tsvector`` folds case but not diacritics, nor decomposed characters).
    """
    terms = query_terms(text)
    if not terms:
        return None
    parts: list[ColumnElement[Any]] = [
        func.phraseto_tsquery(_ENGLISH, bindparam(f"kw_term_{i}", unicodedata.normalize("NFC", term), Text), type_=TSQUERY)
        for i, term in enumerate(terms)
    ]
    return reduce(lambda a, b: a.op("||", return_type=TSQUERY)(b), parts)


def _pg_search(conn: Connection, query: str, limit: int, condition: ColumnElement[bool] | None,
               snippets: bool) -> list[KeywordHit]:
    q = ts_query(query)
    if q is None or limit <= 0:
        return []
    rank = func.ts_rank_cd(_TEXT_SEARCH, q, literal_column(str(TS_RANK_NORMALISATION)), type_=Float).label("kw_rank")
    stmt = select(_DOCS.c.id, rank).where(_TEXT_SEARCH.bool_op("@@")(q))
    if condition is not None:
        stmt = stmt.where(condition)
    rows = conn.execute(stmt.order_by(rank.desc(), _DOCS.c.id).limit(limit)).all()
    # Snippets in a second query, for the hits only: ts_headline re-parses the whole
    # text, and in the ranking query it could run for every matching document.
    marked = _pg_snippets(conn, query, q, [int(r[0]) for r in rows]) if snippets and rows else {}
    return [KeywordHit(int(r[0]), float(r[1]), *marked.get(int(r[0]), ("", ()))) for r in rows]


def _pg_snippets(conn: Connection, query: str, q: ColumnElement[Any],
                 ids: list[int]) -> dict[int, tuple[str, tuple[tuple[int, int], ...]]]:
    # One query: a small text comes with its headline, a large one (HEADLINE_MAX_BYTES)
    # with its first PREFIX_CHARS characters only, headlined in a window below.
    small = (func.octet_length(_DOCS.c.text) <= HEADLINE_MAX_BYTES).label("kw_small")
    headline = func.ts_headline(_ENGLISH, _DOCS.c.text, q, literal(HEADLINE_OPTIONS, Text), type_=Text)
    stmt = select(
        _DOCS.c.id, small,
        case((small, _DOCS.c.text), else_=func.left(_DOCS.c.text, PREFIX_CHARS + 1)),
        case((small, headline), else_=None),
    ).where(_DOCS.c.id.in_(ids), _TEXT_SEARCH.bool_op("@@")(q))
    out: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {}
    match: str | None = None
    terms: _Terms | None = None
    for r in conn.execute(stmt).all():
        doc_id, text = int(r[0]), r[2] or ""
        if r[1]:
            out[doc_id] = _headline(text, r[3] or "")
            continue
        if match is None:
            match, terms = fts_query(query), _term_pattern(query)
        assert match is not None  # the query has terms: ts_query gave a tsquery
        # FTS5's Porter stemmer stands in for PostgreSQL's Snowball English one to find
        # the window; ts_headline then marks the window as it would the whole text.
        doc = _Prefix(text[:PREFIX_CHARS], _pg_rest(conn, doc_id) if len(text) > PREFIX_CHARS else None)
        window = _locate(doc, match, terms)
        part = doc.text[window.start:window.end]
        marked = conn.execute(select(func.ts_headline(
            _ENGLISH, bindparam("kw_window", part, Text), q, literal(HEADLINE_OPTIONS, Text), type_=Text))).scalar()
        out[doc_id] = _widened(*_headline(part, marked or ""), window.before, window.after)
    return out


# The whole text when it is within SCAN_LIMIT bytes: left() of a TOASTed text costs more
# than the text (13 against 8 ms for 1 MB).
_PG_REST = select(case((func.octet_length(_DOCS.c.text) <= bindparam("kw_limit", type_=Integer), _DOCS.c.text),
                       else_=func.left(_DOCS.c.text, bindparam("kw_limit") + 1))).where(_DOCS.c.id == bindparam("kw_id"))


def _pg_rest(conn: Connection, doc_id: int) -> Callable[[], tuple[str, bool]]:
    def rest() -> tuple[str, bool]:
        text = conn.execute(_PG_REST, {"kw_id": doc_id, "kw_limit": SCAN_LIMIT}).scalar() or ""
        return text[:SCAN_LIMIT], len(text) > SCAN_LIMIT

    return rest


def _headline(text: str, marked: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """:func:`parse_snippet` of a ts_headline, with ``…`` where it cut words off the
    document's text before or after it (as FTS5's snippet() marks a cut), and the
    punctuation it leaves out at the text's very start or end (``rain.``) put back."""
    plain, spans = parse_snippet(marked)
    at = text.find(plain) if plain else -1
    if at < 0:  # the text held a stray marker; leave the snippet as it is
        return plain, spans
    end = at + len(plain)
    before = SNIPPET_ELLIPSIS if any(map(_is_token_char, text[:at])) else text[:at].lstrip()
    after = SNIPPET_ELLIPSIS if any(map(_is_token_char, text[end:])) else text[end:].rstrip()
    shift = len(before)
    return before + plain + after, tuple((s + shift, e + shift) for s, e in spans)


_PG_HAS_COLUMN = (
    "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('documents') "
    "AND attname = 'text_search' AND attnum > 0 AND NOT attisdropped"
)


# -- both ----------------------------------------------------------------------------


def keyword_available(conn: Connection) -> bool:
    """Whether the database has the keyword index: SQLite at revision 0002 or later (the
    FTS5 table), PostgreSQL at 0003 or later (the ``text_search`` column)."""
    if conn.dialect.name == "postgresql":
        return conn.exec_driver_sql(_PG_HAS_COLUMN).first() is not None
    if conn.dialect.name != "sqlite":
        return False
    found = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'documents_fts'"
    ).first()
    return found is not None


def keyword_search(
    conn: Connection,
    query: str,
    limit: int,
    *,
    condition: ColumnElement[bool] | None = None,
    snippets: bool = True,
) -> list[KeywordHit]:
    """The ``limit`` documents that best match ``query``, best first (ties by id): by BM25
    on SQLite, by ``ts_rank_cd`` on PostgreSQL.

    Runs on ``conn`` in its open transaction, so the hits agree with whatever else the
    caller reads in that snapshot. ``condition`` (a boolean expression over the
    ``documents`` table, such as a metadata filter) restricts the documents searched.
    Returns [] for a query without terms and on databases other than SQLite and PostgreSQL.
    """
    if conn.dialect.name == "postgresql":
        return _pg_search(conn, query, limit, condition, snippets)
    if conn.dialect.name != "sqlite":
        return []
    match = fts_query(query)
    if match is None or limit <= 0:
        return []
    if condition is not None:
        ranked = _ranked(conn, _MATCHES.where(condition).limit(limit), match)
    else:
        ranked = _ranked(conn, _MATCHES_ONLY.limit(limit), match)
        found = {i for i, _ in ranked}
        if found and len(found & set(conn.execute(_EXISTING, {"ids": list(found)}).scalars())) < len(found):
            # An indexed row without its document: only a program's INSERT OR REPLACE that
            # moved an external id to a new row leaves one (SQLite fires no delete trigger).
            ranked = _ranked(conn, _MATCHES.limit(limit), match)
    # Snippets in a second query, for the hits only, never in the ranking query: SQLite
    # would compute them for every row it sorts (see keyword_snippets).
    marked = keyword_snippets(conn, query, [i for i, _ in ranked]) if snippets and ranked else {}
    return [KeywordHit(i, score, *marked.get(i, ("", ()))) for i, score in ranked]


_EXISTING = select(_DOCS.c.id).where(_DOCS.c.id.in_(bindparam("ids", expanding=True)))


def _ranked(conn: Connection, stmt: Any, match: str) -> list[tuple[int, float]]:
    return [(int(row[0]), -float(row[1])) for row in conn.execute(stmt, {"kw_query": match})]


_SNIPPETS_OF = (
    select(_FTS.c.rowid, _SNIPPET)
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")), _FTS.c.rowid.in_(bindparam("ids", expanding=True)))
)
# FTS5's record of every indexed document's length: ``sz`` holds one varint per column
# (documents_fts has one), its number of tokens. With the text's length in bytes (a
# BLOB's length is read from the record, its bytes not counted).
_DOCSIZE = table("documents_fts_docsize", column("id", Integer), column("sz", LargeBinary))
_SIZES_OF = (
    select(_DOCSIZE.c.id, _DOCSIZE.c.sz, func.length(cast(_DOCS.c.text, LargeBinary)))
    .select_from(_DOCSIZE.join(_DOCS, _DOCS.c.id == _DOCSIZE.c.id))
    .where(_DOCSIZE.c.id.in_(bindparam("ids", expanding=True)))
)
# The text as bytes (UTF-8, the encoding SQLite gives a new database, which
# Store.open creates): _Prefix decodes only as much as the scan needs.
_TEXTS_OF = (
    select(_FTS.c.rowid, func.substr(cast(_DOCS.c.text, LargeBinary), 1, bindparam("kw_bytes", type_=Integer)))
    .select_from(_FTS.join(_DOCS, _DOCS.c.id == _FTS.c.rowid))
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")), _FTS.c.rowid.in_(bindparam("ids", expanding=True)))
)


def _varint(data: bytes) -> int:
    """SQLite's variable-length integer at the start of ``data`` (7 bits a byte, high bit
    set on all but the last; a ninth byte gives 8 bits)."""
    value = 0
    for i, byte in enumerate(data[:9]):
        if i == 8:
            return (value << 8) | byte
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            break
    return value


def keyword_snippets(conn: Connection, query: str, ids: list[int]) -> dict[int, tuple[str, tuple[tuple[int, int], ...]]]:
    """Snippets of ``query``'s matches in the documents ``ids`` (those that match), by id.

    A search ranks without snippets and asks for these for its final hits only: SQLite
    computes a selected column for every row it sorts, so ``snippet()`` in the ranking
    query would run for every document that matches any term (and PostgreSQL's
    ``ts_headline`` parses the document's whole text again).

    A document over :data:`SNIPPET_MAX_TOKENS` tokens or :data:`SNIPPET_MAX_BYTES`
    (PostgreSQL: :data:`HEADLINE_MAX_BYTES`) gets the snippet of a window of its text
    around its first match instead (see :func:`_locate`), so that a snippet takes
    bounded time, and has a bounded length, whatever the document's size.
    """
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        q = ts_query(query)
        return _pg_snippets(conn, query, q, list(ids)) if q is not None else {}
    match = fts_query(query) if conn.dialect.name == "sqlite" else None
    if match is None:
        return {}
    large_ids = {int(r[0]) for r in conn.execute(_SIZES_OF, {"ids": list(ids)})
                 if _varint(r[1] or b"") > SNIPPET_MAX_TOKENS or (r[2] or 0) > SNIPPET_MAX_BYTES}
    small = [i for i in ids if i not in large_ids]
    large = [i for i in ids if i in large_ids]
    out: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {}
    if small:
        # FTS5 answers ``rowid IN (...)`` with one seek of the query's terms per id: the cost
        # follows the hits asked for (0.17 ms each on Cranfield), not the documents matching.
        rows = conn.execute(_SNIPPETS_OF, {"kw_query": match, "ids": small})
        out.update((int(r[0]), parse_snippet(r[1] or "")) for r in rows)
    if large:
        rows = conn.execute(_TEXTS_OF, {"kw_query": match, "ids": large, "kw_bytes": SCAN_LIMIT + 1})
        terms = _term_pattern(query)
        for r in rows:
            doc = _Prefix.of_bytes(bytes(r[1] or b""))
            out[int(r[0])] = _window_snippet(doc.text, _locate(doc, match, terms))
    return out


# -- snippets of large documents -------------------------------------------------------

# FTS5's snippet() scores a fragment around every match of the query against every other
# match, so its time grows with the square of a document's matches. Measured on a 2-core
# AMD EPYC (Python's SQLite 3.40), a document whose every token matches: 512 tokens
# 1.3-1.9 ms, 1,024 tokens 6.1-8.4 ms, 2,048 21 ms, 4,096 84-94 ms; catalog text with one
# match in 20 tokens: 16 KB 0.3 ms, 64 KB 3 ms, 256 KB 36 ms (and the 1 MB
# document 41 s). Up to SNIPPET_MAX_TOKENS tokens and SNIPPET_MAX_BYTES, snippet() still
# runs on the stored row, exactly as before: that is every document of the catalog,
# Cranfield and MEDLINE (the largest, 4.2 KB, has about 700 tokens), at most about 8 ms
# even when every token matches. A token count, since one-letter words put 4,096 tokens
# (84 ms) in 8 KB; a byte count too, since snippet() returns its fragment's tokens whole
# and unicode61 makes one token of a run of letters without spaces (Chinese text, a
# base64 blob): 2 tokens in 1 MB would make a 1 MB snippet.
SNIPPET_MAX_TOKENS = 1024
SNIPPET_MAX_BYTES = 16 * 1024
# ts_headline parses the whole text and costs about linearly in its size (same machine,
# PostgreSQL 15: 4 KB 0.6-3.7 ms, 16 KB 2.2-4.3 ms, 64 KB 10-16 ms, 1 MB 140-180 ms):
# a text over HEADLINE_MAX_BYTES (octet_length, which reads no TOASTed value) is
# headlined in a window, at about the cost of a 4 KB text.
HEADLINE_MAX_BYTES = 16 * 1024
# A window: up to WINDOW_BEFORE_TOKENS tokens before the first match (snippet() may open
# its fragment up to 15 tokens before a match, at a sentence start) and WINDOW_AFTER_TOKENS
# from it, where snippet() finds the best fragment near the match; the character limits
# bound it whatever the tokens' length. Its snippet() takes about 0.15 ms even when every
# token matches (and a large document's whole snippet, 0.5 to 0.9 ms when its first match
# is in its first 64 KB, 5 to 7 ms when in its last, for 1 MB).
WINDOW_BEFORE_TOKENS = 32
WINDOW_AFTER_TOKENS = 128
WINDOW_BEFORE_CHARS = 512
WINDOW_AFTER_CHARS = 2048
# The most of a large document read and searched for a match, in bytes on SQLite, in
# characters on PostgreSQL: the whole of any document within the 1 MiB
# max_document_bytes limit; a larger one, written before the limit, is searched in its
# first MiB only.
SCAN_LIMIT = 1 << 20
# A large document's first PREFIX_CHARS (bytes on SQLite) are searched first, the rest
# read only when they hold no match: decoding a whole MB of text into a str takes about
# 2 ms on SQLite, more than the rest of the snippet, and reading it from PostgreSQL 8 ms
# (its first 64 K characters, 1 ms), while the first match is usually near the start.
PREFIX_CHARS = 1 << 16
# Words that start like a term's stem checked (their own stem, cached), and windows around
# words with a term's stem tried (the window's MATCH confirms a phrase or not), before the
# snippet falls back to the document's start.
MAX_CANDIDATES = 1024
MAX_WINDOWS = 8
# Longer candidate words are not stemmed (the cache keeps its words), only tried in a window.
_LONGEST_WORD = 64
# Revision 0002's tokenizer: the scratch FTS5 table reads a window as documents_fts reads
# the whole document (tests/test_large_documents.py compares the two).
FTS5_TOKENIZE = "porter unicode61 remove_diacritics 2"

# Characters unicode61 keeps in tokens (letters, digits, combining marks, private use; see
# _is_token_char), as a regular expression class, so that scans run at C speed.
_MARKS = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f"
_TOKEN_CHAR = f"(?:[^\\W_]|[{_MARKS}\ue000-\uf8ff])"
_TOKEN = re.compile(f"{_TOKEN_CHAR}+")
_IS_TOKEN_CHAR = re.compile(_TOKEN_CHAR)
# The same, as two patterns of one character class each: re scans for those fastest.
_WORD_CHAR = re.compile(r"[^\W_]")
_OTHER_TOKEN_CHAR = re.compile(f"[{_MARKS}\ue000-\uf8ff]")
# How far from a window a document is searched for a token before or after it (beyond,
# tokens are assumed: only thousands of spaces or punctuation marks in a row would say
# otherwise, and whether they do costs a scan of the whole document).
_EDGE_CHARS = 4096


class _Scratch(threading.local):
    con: sqlite3.Connection | None = None
    pid = 0


_SCRATCH = _Scratch()


def _scratch() -> sqlite3.Connection:
    """This thread's in-memory database with the FTS5 table ``w`` (revision 0002's
    tokenizer) and ``w_terms``, its fts5vocab of token instances: made on first use, and
    again in a forked process (an SQLite connection must not cross a fork)."""
    if _SCRATCH.con is None or _SCRATCH.pid != os.getpid():
        con = sqlite3.connect(":memory:", isolation_level=None)
        con.execute(f"CREATE VIRTUAL TABLE w USING fts5(text, tokenize='{FTS5_TOKENIZE}')")
        con.execute("CREATE VIRTUAL TABLE w_terms USING fts5vocab(w, 'instance')")
        _SCRATCH.con, _SCRATCH.pid = con, os.getpid()
    return _SCRATCH.con


def _stems(terms: list[str]) -> list[str]:
    """The longest token of each term as documents_fts indexes it (case and diacritics
    folded, Porter-stemmed): every match of the term has a token with this stem."""
    con = _scratch()
    con.execute("DELETE FROM w")
    con.executemany("INSERT INTO w (rowid, text) VALUES (?, ?)", enumerate(terms, 1))
    longest: dict[int, str] = {}
    for doc, term in con.execute("SELECT doc, term FROM w_terms"):
        if len(term) > len(longest.get(doc, "")):
            longest[doc] = term
    return sorted(set(longest.values()))


@lru_cache(maxsize=1)
def _folded_letters() -> dict[str, str]:
    """Latin letters with diacritics, by the letter that remove_diacritics folds them to."""
    out: dict[str, str] = {}
    for ch in map(chr, chain(range(0xC0, 0x250), range(0x1E00, 0x1F00))):
        base = unicodedata.normalize("NFD", ch)[0].lower()
        if base != ch.lower() and base.isascii() and base.isalnum():
            out[base] = out.get(base, "") + ch
    return out


def _letter(ch: str) -> str:
    """The characters that fold to ``ch`` (a letter of a stem, folded): itself, its
    upper case, and its forms with diacritics."""
    forms = {ch, ch.upper()} if len(ch.upper()) == 1 else {ch}
    return "".join(sorted(forms | set(_folded_letters().get(ch, ""))))


@lru_cache(maxsize=256)
def _stem_pattern(stems: tuple[str, ...]) -> re.Pattern[str] | None:
    """Where a token with one of ``stems`` may start: a word that begins with the stem, in
    any case, with or without diacritics. Porter's stem is the start of the word but for
    a final "i" or "e" it may write itself ("happy", "happiness" give "happi"; "hoping",
    "hopes" give "hope"): the word has an "e", "i" or "y" there (so in every one of the
    64,162 distinct ASCII words of the 100,000-document catalog, Cranfield and MEDLINE;
    in all of them the stem is otherwise the word's start). A word that merely starts
    like a stem is a candidate that :func:`_locate` rejects.

    The pattern opens with one character class, the first letters of all stems, so that
    ``re`` skips to those letters at C speed (about 4 ms a MB; with a lookbehind first,
    30 ms)."""
    firsts: list[str] = []
    alternatives: list[str] = []
    for stem in stems:
        letters = [re.escape(_letter(ch)) for ch in stem]
        if len(stem) > 1 and stem[-1] in "ie":
            letters[-1] = re.escape("".join(_letter(ch) for ch in "eiy"))
        firsts.append(letters[0])
        alternatives.append(f"(?<=[{letters[0]}])" + "".join(f"[{_MARKS}]*[{chars}]" for chars in letters[1:]))
    if not alternatives:
        return None
    # (?<!T.): the character before the first letter is not a token's.
    return re.compile(f"[{''.join(firsts)}](?<!{_TOKEN_CHAR}.)(?:{'|'.join(alternatives)})", re.DOTALL)


@dataclass(frozen=True)
class _Terms:
    """What a scan of a large document looks for: ``pattern`` finds words that may have
    one of ``stems``, the stems of the query's terms (see :func:`_stems`)."""

    pattern: re.Pattern[str]
    stems: frozenset[str]


@lru_cache(maxsize=256)
def _term_pattern(query: str) -> _Terms | None:
    stems = tuple(_stems(query_terms(query)))
    pattern = _stem_pattern(stems)
    return _Terms(pattern, frozenset(stems)) if pattern is not None else None


@lru_cache(maxsize=4096)
def _word_stems(word: str) -> frozenset[str]:
    """The stems documents_fts gives the tokens of ``word``: whether a candidate is a match
    (a document repeats its words, so most answers come from the cache)."""
    con = _scratch()
    con.execute("INSERT OR REPLACE INTO w (rowid, text) VALUES (1, ?)", (word,))
    return frozenset(term for (term,) in con.execute("SELECT term FROM w_terms WHERE doc = 1"))


class _Prefix:
    """A large document's text, read as far as a scan has needed it: ``text``, its first
    PREFIX_CHARS characters (about) and then all of it up to :data:`SCAN_LIMIT` (from
    ``rest``, which gives that text and whether the document goes on after it)."""

    def __init__(self, first: str, rest: Callable[[], tuple[str, bool]] | None) -> None:
        self.text = first
        self._rest = rest
        self._truncated = False

    @classmethod
    def of_bytes(cls, data: bytes) -> _Prefix:
        """The first SCAN_LIMIT + 1 bytes of a UTF-8 text, decoded in two steps."""
        def rest() -> tuple[str, bool]:
            return data[:_char_boundary(data, SCAN_LIMIT)].decode("utf-8", errors="replace"), len(data) > SCAN_LIMIT

        first = data[:_char_boundary(data, PREFIX_CHARS)].decode("utf-8", errors="replace")
        return cls(first, rest if len(data) > PREFIX_CHARS else None)

    @property
    def more(self) -> bool:
        """Whether the document goes on after ``text``."""
        return self._truncated or self._rest is not None

    def grow(self) -> bool:
        """Read the rest; False when there is none."""
        if self._rest is None:
            return False
        self.text, self._truncated = self._rest()
        self._rest = None
        return True


def _char_boundary(data: bytes, end: int) -> int:
    """``end``, moved back to the start of the UTF-8 character it falls inside (not
    beyond 3 bytes: the decoder replaces what is not UTF-8)."""
    if end >= len(data):
        return len(data)
    back = end
    while back > max(0, end - 3) and 0x80 <= data[back] < 0xC0:  # a continuation byte
        back -= 1
    return back if back > 0 else end


@dataclass(frozen=True)
class _Window:
    """``text[start:end]`` of a large document; ``before`` and ``after``: whether the
    document has tokens outside it; ``marked``: FTS5's snippet() of it, None when it holds
    no match (the window at the document's start, when no window tried matched)."""

    start: int
    end: int
    before: bool
    after: bool
    marked: str | None = None


def _window(text: str, at: int, more: bool) -> _Window:
    """The window around the token starting at ``at``, cut at token boundaries."""
    lo = max(0, at - WINDOW_BEFORE_CHARS)
    before = [m.start() for m in _TOKEN.finditer(text, lo, at)]
    if before and before[0] == lo > 0 and _IS_TOKEN_CHAR.match(text, lo - 1):
        before.pop(0)  # the end of a token the character limit cut
    kept = before[-WINDOW_BEFORE_TOKENS:]
    start = kept[0] if kept else at
    hi = min(len(text), at + WINDOW_AFTER_CHARS)
    after = list(islice(_TOKEN.finditer(text, at, hi), WINDOW_AFTER_TOKENS))
    if len(after) > 1 and after[-1].end() == hi and _IS_TOKEN_CHAR.match(text, hi):
        after.pop()  # the start of a token the character limit cut
    end = after[-1].end() if after else hi
    more_before = start > _EDGE_CHARS or _has_token_char(text, 0, start)
    more_after = more or len(text) - end > _EDGE_CHARS or _has_token_char(text, end, len(text))
    # At the document's edge, snippet() shows the text before its first token or after
    # its last (punctuation, spaces): so does the window, when that text is short.
    if not more_before and start <= WINDOW_BEFORE_CHARS:
        start = 0
    if not more_after and len(text) - end <= WINDOW_AFTER_CHARS:
        end = len(text)
    return _Window(start, end, more_before, more_after)


def _has_token_char(text: str, start: int, end: int) -> bool:
    return _WORD_CHAR.search(text, start, end) is not None or _OTHER_TOKEN_CHAR.search(text, start, end) is not None


_SCRATCH_SNIPPET = "SELECT snippet(w, 0, ?, ?, ?, ?) FROM w WHERE w MATCH ? AND rowid = 1"


def _fts5_snippet(match: str, window: str) -> str | None:
    """FTS5's snippet() of ``window`` for the MATCH expression ``match``, as keyword_snippets
    asks it of a stored row; None when the window does not match."""
    con = _scratch()
    con.execute("INSERT OR REPLACE INTO w (rowid, text) VALUES (1, ?)", (window,))
    row = con.execute(_SCRATCH_SNIPPET, (SNIPPET_OPEN, SNIPPET_CLOSE, SNIPPET_ELLIPSIS, SNIPPET_TOKENS, match)).fetchone()
    return None if row is None else str(row[0] or "")


def _locate(doc: _Prefix, match: str, terms: _Terms | None) -> _Window:
    """The window of a large document around its first match of ``match``.

    ``terms`` (:func:`_term_pattern`) finds candidate words at C speed, first to last; a
    word whose stem is a term's is tried: FTS5 confirms it by matching the window around
    it (a phrase needs its other words), and its snippet() of that window is the
    snippet. After :data:`MAX_CANDIDATES` words or :data:`MAX_WINDOWS` windows without a
    match, or none found (a spelling the pattern does not foresee, a match past
    :data:`SCAN_LIMIT`), the window at the document's start, unmarked. Time and memory
    are bounded by the windows' size and the scan's.
    """
    pos = 0
    tried = 0
    words = 0
    while terms is not None and tried < MAX_WINDOWS and words < MAX_CANDIDATES:
        found = terms.pattern.search(doc.text, pos)
        # A candidate needs its window's text after it, and a word cut where the decoded
        # text ends can hide one: decode further and search again.
        if (found is None or found.start() + WINDOW_AFTER_CHARS >= len(doc.text)) and doc.grow():
            continue
        if found is None:
            break
        words += 1
        word = _TOKEN.match(doc.text, found.start(), found.start() + _LONGEST_WORD)
        if word is not None and word.end() < found.start() + _LONGEST_WORD and not _word_stems(word.group()) & terms.stems:
            pos = word.end()  # starts like a stem, has another ("runtime" for "run")
            continue
        window = _window(doc.text, found.start(), doc.more)
        marked = _fts5_snippet(match, doc.text[window.start:window.end])
        if marked is not None:
            return _Window(window.start, window.end, window.before, window.after, marked)
        pos = window.end
        tried += 1
    return _window(doc.text, 0, doc.more)


def _widened(plain: str, spans: tuple[tuple[int, int], ...], before: bool,
             after: bool) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A window's snippet with ``…`` where the window cut text off the document, as
    snippet() marks a cut, unless the snippet already starts (ends) with one of its own."""
    if before and not plain.startswith(SNIPPET_ELLIPSIS):
        plain = SNIPPET_ELLIPSIS + plain
        shift = len(SNIPPET_ELLIPSIS)
        spans = tuple((s + shift, e + shift) for s, e in spans)
    if after and not plain.endswith(SNIPPET_ELLIPSIS):
        plain += SNIPPET_ELLIPSIS
    return plain, spans


def _window_snippet(text: str, window: _Window) -> tuple[str, tuple[tuple[int, int], ...]]:
    """The snippet of a large document on SQLite: FTS5's of its window, or without a
    match, its first SNIPPET_TOKENS tokens, as snippet() shows a text it finds no match in."""
    if window.marked is not None:
        return _widened(*parse_snippet(window.marked), window.before, window.after)
    first = list(islice(_TOKEN.finditer(text, window.start, window.end), SNIPPET_TOKENS))
    end = first[-1].end() if first else window.end
    after = window.after or _has_token_char(text, end, window.end)
    if not after:
        end = window.end
    return _widened(*parse_snippet(text[window.start:end]), window.before, after)


def keyword_problems(conn: Connection, limit: int = 20) -> list[str]:
    """Documents the keyword index misses, and indexed rows with no document, read-only in
    the caller's snapshot (FTS5's own integrity-check would take the write lock).

    On PostgreSQL the index is a generated column, computed with every write of a row, so
    it cannot miss or outlive a document: only a missing column (or its GIN index) is a
    problem."""
    if conn.dialect.name == "postgresql":
        if not keyword_available(conn):
            return ["documents has no text_search column: keyword search cannot run (revision 0003 adds it)"]
        if conn.exec_driver_sql("SELECT to_regclass('ix_documents_text_search')").scalar() is None:
            return ["the GIN index ix_documents_text_search is missing: keyword search reads every document "
                    "(revision 0003 creates it)"]
        return []
    if not keyword_available(conn):
        return []
    missing = conn.exec_driver_sql(
        "SELECT d.id FROM documents d LEFT JOIN documents_fts_docsize s ON s.id = d.id WHERE s.id IS NULL "
        f"ORDER BY d.id LIMIT {int(limit)}").scalars().all()
    extra = conn.exec_driver_sql(
        "SELECT s.id FROM documents_fts_docsize s LEFT JOIN documents d ON d.id = s.id WHERE d.id IS NULL "
        f"ORDER BY s.id LIMIT {int(limit)}").scalars().all()
    fix = " (`retrieve reindex` rebuilds it)"
    return ([f"document {i} is missing from the keyword index{fix}" for i in missing]
            + [f"the keyword index holds document {i}, which is not in the database{fix}" for i in extra])


def rebuild_keyword_index(conn: Connection) -> None:
    """Rebuild the keyword index from ``documents`` (in the caller's write transaction).

    Nothing to do on PostgreSQL: ``text_search`` is a generated column, which PostgreSQL
    computes from the row's text on every insert and update (whichever program writes),
    and the GIN index over it is maintained by PostgreSQL like any other index."""
    if conn.dialect.name == "sqlite" and keyword_available(conn):
        conn.exec_driver_sql("INSERT INTO documents_fts(documents_fts) VALUES('rebuild')")
