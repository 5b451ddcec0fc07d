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

import unicodedata
from collections.abc import Callable
from functools import reduce
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

from retrieval.store import windows
from retrieval.store.models import Base
from retrieval.store.terms import (
    SNIPPET_CLOSE,
    SNIPPET_ELLIPSIS,
    SNIPPET_OPEN,
    SNIPPET_TOKENS,
    KeywordHit,
    fts_query,
    is_token_char,
    parse_snippet,
    query_terms,
)

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
    # One query: a small text comes with its headline, a large one (windows.HEADLINE_MAX_BYTES)
    # with its first windows.PREFIX_CHARS characters only, headlined in a window below.
    small = (func.octet_length(_DOCS.c.text) <= windows.HEADLINE_MAX_BYTES).label("kw_small")
    headline = func.ts_headline(_ENGLISH, _DOCS.c.text, q, literal(HEADLINE_OPTIONS, Text), type_=Text)
    stmt = select(
        _DOCS.c.id, small,
        case((small, _DOCS.c.text), else_=func.left(_DOCS.c.text, windows.PREFIX_CHARS + 1)),
        case((small, headline), else_=None),
    ).where(_DOCS.c.id.in_(ids), _TEXT_SEARCH.bool_op("@@")(q))
    out: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {}
    match: str | None = None
    terms: windows.Terms | None = None
    for r in conn.execute(stmt).all():
        doc_id, text = int(r[0]), r[2] or ""
        if r[1]:
            out[doc_id] = _headline(text, r[3] or "")
            continue
        if match is None:
            match, terms = fts_query(query), windows.term_pattern(query)
        assert match is not None  # the query has terms: ts_query gave a tsquery
        # FTS5's Porter stemmer stands in for PostgreSQL's Snowball English one to find
        # the window; ts_headline then marks the window as it would the whole text.
        doc = windows.Prefix(text[:windows.PREFIX_CHARS], _pg_rest(conn, doc_id) if len(text) > windows.PREFIX_CHARS else None)
        window = windows.locate(doc, match, terms)
        part = doc.text[window.start:window.end]
        marked = conn.execute(select(func.ts_headline(
            _ENGLISH, bindparam("kw_window", part, Text), q, literal(HEADLINE_OPTIONS, Text), type_=Text))).scalar()
        out[doc_id] = windows.widened(*_headline(part, marked or ""), window.before, window.after)
    return out


# The whole text when it is within windows.SCAN_LIMIT bytes: left() of a TOASTed text costs more
# than the text (13 against 8 ms for 1 MB).
_PG_REST = select(case((func.octet_length(_DOCS.c.text) <= bindparam("kw_limit", type_=Integer), _DOCS.c.text),
                       else_=func.left(_DOCS.c.text, bindparam("kw_limit") + 1))).where(_DOCS.c.id == bindparam("kw_id"))


def _pg_rest(conn: Connection, doc_id: int) -> Callable[[], tuple[str, bool]]:
    def rest() -> tuple[str, bool]:
        text = conn.execute(_PG_REST, {"kw_id": doc_id, "kw_limit": windows.SCAN_LIMIT}).scalar() or ""
        return text[:windows.SCAN_LIMIT], len(text) > windows.SCAN_LIMIT

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
    before = SNIPPET_ELLIPSIS if any(map(is_token_char, text[:at])) else text[:at].lstrip()
    after = SNIPPET_ELLIPSIS if any(map(is_token_char, text[end:])) else text[end:].rstrip()
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
# Store.open creates): windows.Prefix decodes only as much as the scan needs.
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

    A document over :data:`windows.SNIPPET_MAX_TOKENS` tokens or :data:`windows.SNIPPET_MAX_BYTES`
    (PostgreSQL: :data:`windows.HEADLINE_MAX_BYTES`) gets the snippet of a window of its text
    around its first match instead (see :func:`windows.locate`), so that a snippet takes
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
                 if _varint(r[1] or b"") > windows.SNIPPET_MAX_TOKENS or (r[2] or 0) > windows.SNIPPET_MAX_BYTES}
    small = [i for i in ids if i not in large_ids]
    large = [i for i in ids if i in large_ids]
    out: dict[int, tuple[str, tuple[tuple[int, int], ...]]] = {}
    if small:
        # FTS5 answers ``rowid IN (...)`` with one seek of the query's terms per id: the cost
        # follows the hits asked for (0.17 ms each on Cranfield), not the documents matching.
        rows = conn.execute(_SNIPPETS_OF, {"kw_query": match, "ids": small})
        out.update((int(r[0]), parse_snippet(r[1] or "")) for r in rows)
    if large:
        rows = conn.execute(_TEXTS_OF, {"kw_query": match, "ids": large, "kw_bytes": windows.SCAN_LIMIT + 1})
        terms = windows.term_pattern(query)
        for r in rows:
            doc = windows.Prefix.of_bytes(bytes(r[1] or b""))
            out[int(r[0])] = windows.window_snippet(doc.text, windows.locate(doc, match, terms))
    return out


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
