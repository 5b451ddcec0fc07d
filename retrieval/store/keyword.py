"""Keyword search over the FTS5 index of revision 0002 (SQLite; PostgreSQL comes later).

``documents_fts`` indexes ``documents.text`` with the ``porter unicode61
remove_diacritics 2`` tokenizer (English stemming, case and diacritics folded) and is kept
in step by triggers, so a keyword search sees exactly the documents of the caller's
snapshot: a document is found the moment its write commits, whoever wrote it.

User text never reaches FTS5's query syntax: :func:`fts_query` turns every term into an
FTS5 string, so operators (AND, OR, NOT, NEAR, ``*``, ``^``, ``:``, ``-``, ``+``),
quotes and brackets in a query are plain text, and the terms are joined with OR: a
natural-language query ranks documents by BM25 over any of its terms.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Float, Integer, bindparam, column, func, literal, literal_column, select, table
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
    """One keyword match: the document's id, its score (``-bm25``, higher is better), and
    a plain-text snippet with ``highlights``, (start, end) character offsets of the
    matched terms in it (empty with ``snippets=False``)."""

    id: int
    score: float
    snippet: str
    highlights: tuple[tuple[int, int], ...]


_MARKERS = re.compile(f"([{SNIPPET_OPEN}{SNIPPET_CLOSE}])")


def parse_snippet(marked: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Split the output of FTS5 ``snippet()`` into plain text and highlight offsets.

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


def keyword_available(conn: Connection) -> bool:
    """Whether the database has the keyword index (SQLite at revision 0002 or later)."""
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
    """The ``limit`` documents that best match ``query`` by BM25, best first (ties by id).

    Runs on ``conn`` in its open transaction, so the hits agree with whatever else the
    caller reads in that snapshot. ``condition`` (a boolean expression over the
    ``documents`` table, such as a metadata filter) restricts the documents searched.
    Returns [] for a query without terms and on databases other than SQLite.
    """
    if conn.dialect.name != "sqlite":
        # TODO: PostgreSQL: a tsvector column on documents with a GIN index (a later
        # revision), websearch_to_tsquery / ts_rank_cd, ts_headline for the snippet.
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
    query would run for every document that matches any term.
    """
    match = fts_query(query) if conn.dialect.name == "sqlite" else None
    if match is None or not ids:
        return {}
    # FTS5 answers ``rowid IN (...)`` with one seek of the query's terms per id: the cost
    # follows the hits asked for (0.17 ms each on Cranfield), not the documents matching.
    rows = conn.execute(_SNIPPETS_OF, {"kw_query": match, "ids": list(ids)})
    return {int(r[0]): parse_snippet(r[1] or "") for r in rows}


def keyword_problems(conn: Connection, limit: int = 20) -> list[str]:
    """Documents the keyword index misses, and indexed rows with no document, read-only in
    the caller's snapshot (FTS5's own integrity-check would take the write lock)."""
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
    """Rebuild the keyword index from ``documents`` (in the caller's write transaction)."""
    if keyword_available(conn):
        conn.exec_driver_sql("INSERT INTO documents_fts(documents_fts) VALUES('rebuild')")
