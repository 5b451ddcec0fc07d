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
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import reduce
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    Integer,
    Text,
    bindparam,
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
_MATCHES_WITH_SNIPPETS = _MATCHES.add_columns(_SNIPPET)
# Without a filter the join is not needed (the triggers keep every indexed row a
# document): it halves a search whose terms match many documents, as each match would
# otherwise read its row (11.8 against 23.8 ms p50 on the 100,000-document catalog).
_MATCHES_ONLY = (
    select(_FTS.c.rowid, _RANK)
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")))
    .order_by(_RANK, _FTS.c.rowid)
)
_MATCHES_ONLY_WITH_SNIPPETS = _MATCHES_ONLY.add_columns(_SNIPPET)


# -- PostgreSQL -----------------------------------------------------------------------

# Revision 0003's generated column, left out of the models (migrations/env.py skips it).
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
    marked = _pg_snippets(conn, q, [int(r[0]) for r in rows]) if snippets and rows else {}
    return [KeywordHit(int(r[0]), float(r[1]), *marked.get(int(r[0]), ("", ()))) for r in rows]


def _pg_snippets(conn: Connection, q: ColumnElement[Any],
                 ids: list[int]) -> dict[int, tuple[str, tuple[tuple[int, int], ...]]]:
    headline = func.ts_headline(_ENGLISH, _DOCS.c.text, q, literal(HEADLINE_OPTIONS, Text), type_=Text)
    stmt = select(_DOCS.c.id, _DOCS.c.text, headline).where(_DOCS.c.id.in_(ids), _TEXT_SEARCH.bool_op("@@")(q))
    return {int(r[0]): _headline(r[1] or "", r[2] or "") for r in conn.execute(stmt)}


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
    joined = _MATCHES_WITH_SNIPPETS if snippets else _MATCHES
    if condition is not None:
        return _hits(conn, joined.where(condition).limit(limit), match, snippets)
    hits = _hits(conn, (_MATCHES_ONLY_WITH_SNIPPETS if snippets else _MATCHES_ONLY).limit(limit), match, snippets)
    found = {h.id for h in hits}
    if found and len(found & set(conn.execute(_EXISTING, {"ids": list(found)}).scalars())) < len(found):
        # An indexed row without its document: only a program's INSERT OR REPLACE that
        # moved an external id to a new row leaves one (SQLite fires no delete trigger).
        hits = _hits(conn, joined.limit(limit), match, snippets)
    return hits


_EXISTING = select(_DOCS.c.id).where(_DOCS.c.id.in_(bindparam("ids", expanding=True)))


def _hits(conn: Connection, stmt: Any, match: str, snippets: bool) -> list[KeywordHit]:
    out: list[KeywordHit] = []
    for row in conn.execute(stmt, {"kw_query": match}):
        text, highlights = parse_snippet(row[2] or "") if snippets else ("", ())
        out.append(KeywordHit(int(row[0]), -float(row[1]), text, highlights))
    return out


_SNIPPETS_OF = (
    select(_FTS.c.rowid, _SNIPPET)
    .where(_FTS_TABLE.bool_op("MATCH")(bindparam("kw_query")), _FTS.c.rowid.in_(bindparam("ids", expanding=True)))
)


def keyword_snippets(conn: Connection, query: str, ids: list[int]) -> dict[int, tuple[str, tuple[tuple[int, int], ...]]]:
    """Snippets of ``query``'s matches in the documents ``ids`` (those that match), by id.

    A search ranks without snippets and asks for these for its final hits only: SQLite
    computes a selected column for every row it sorts, so ``snippet()`` in the ranking
    query would run for every document that matches any term (and PostgreSQL's
    ``ts_headline`` parses the document's whole text again).
    """
    if not ids:
        return {}
    if conn.dialect.name == "postgresql":
        q = ts_query(query)
        return _pg_snippets(conn, q, list(ids)) if q is not None else {}
    match = fts_query(query) if conn.dialect.name == "sqlite" else None
    if match is None:
        return {}
    # FTS5 answers ``rowid IN (...)`` with one seek of the query's terms per id: the cost
    # follows the hits asked for (0.17 ms each on Cranfield), not the documents matching.
    rows = conn.execute(_SNIPPETS_OF, {"kw_query": match, "ids": list(ids)})
    return {int(r[0]): parse_snippet(r[1] or "") for r in rows}


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
