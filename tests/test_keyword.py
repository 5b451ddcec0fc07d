"""The FTS5 keyword index (revision 0002) and the store-level keyword search.

The index is kept in step by triggers, so it is checked after writes of this service and
of a plain ``sqlite3`` connection alike, and after every test that writes, FTS5's own
integrity check compares it token by token with ``documents``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, text

from retrieval.store import db
from retrieval.store.keyword import (
    MAX_TERMS,
    SNIPPET_CLOSE,
    SNIPPET_OPEN,
    KeywordHit,
    fts_query,
    keyword_available,
    keyword_search,
    parse_snippet,
    query_terms,
)
from retrieval.store.models import Document
from retrieval.store.repository import NewDocument, Store

FTS_TRIGGERS = {"documents_fts_insert", "documents_fts_delete", "documents_fts_update"}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "k.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{db_path}")
    yield s
    s.close()
    assert_index_in_step(db_path)


def assert_index_in_step(path: Path) -> None:
    """FTS5's integrity check with rank 1 also compares the index with the content table:
    it fails on a missing, extra or outdated entry."""
    con = sqlite3.connect(path)
    try:
        con.execute("INSERT INTO documents_fts (documents_fts, rank) VALUES ('integrity-check', 1)")
    finally:
        con.close()


def put(store: Store, *docs: tuple[Any, ...]) -> None:
    """Upsert (external id, text[, metadata]) tuples."""
    store.upsert([NewDocument(d[0], d[1], d[2] if len(d) > 2 else {}) for d in docs])


def hits(store: Store, query: str, limit: int = 10, **kwargs: Any) -> list[KeywordHit]:
    with store.read() as conn:
        return keyword_search(conn, query, limit, **kwargs)


def found(store: Store, query: str, limit: int = 10, **kwargs: Any) -> list[str]:
    """External ids of the hits, best first."""
    with store.read() as conn:
        result = keyword_search(conn, query, limit, **kwargs)
        docs = Store.docs_by_ids(conn, [h.id for h in result])
    return [docs[h.id].external_id for h in result]


# -- the query language --------------------------------------------------------------


def test_fts_query_quotes_every_term_and_joins_with_or() -> None:
    assert fts_query("running shoes") == '"running" OR "shoes"'
    assert fts_query('a"b NEAR(x') == '"a""b" OR "NEAR(x"'
    assert fts_query("AND OR NOT") == '"AND" OR "OR" OR "NOT"'
    assert fts_query("t-shirt") == '"t-shirt"'  # the tokenizer matches it as the phrase "t shirt"


def test_fts_query_strips_separators_at_term_edges_and_control_characters() -> None:
    assert fts_query('"shoes", (boots)!') == '"shoes" OR "boots"'
    assert fts_query("-foo ^bar *") == '"foo" OR "bar"'
    assert fts_query("x\x00y") == '"x" OR "y"'  # SQLite would read the string only up to the NUL
    assert fts_query("x\ud800y") == '"x" OR "y"'  # a lone surrogate cannot be encoded


@pytest.mark.parametrize("query", ["", "   ", "\n\t", '"', '""', "()", "* - ^ + :", "😀🔥", "\x00", "…", "\ud800"])
def test_fts_query_without_terms_is_none(query: str) -> None:
    assert fts_query(query) is None
    assert query_terms(query) == []


def test_stopwords_are_dropped_only_when_another_term_remains() -> None:
    assert fts_query("What are good shoes for jogging?") == '"good" OR "shoes" OR "jogging"'
    assert fts_query("The Who") == '"The" OR "Who"'
    assert fts_query("it can will") == '"it" OR "can" OR "will"'  # nouns a query may mean are kept


def test_terms_are_distinct_ignoring_case_and_capped() -> None:
    assert fts_query("Shoes shoes SHOES boots") == '"Shoes" OR "boots"'
    many = " ".join(f"w{i}" for i in range(500))
    assert query_terms(many) == [f"w{i}" for i in range(MAX_TERMS)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_no_text_makes_an_fts5_syntax_error(query: str) -> None:
    con = _scratch_fts()
    match = fts_query(query)
    if match is not None:
        con.execute("SELECT rowid FROM f WHERE f MATCH ?", (match,)).fetchall()


_SCRATCH: sqlite3.Connection | None = None


def _scratch_fts() -> sqlite3.Connection:
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = sqlite3.connect(":memory:", check_same_thread=False)
        _SCRATCH.execute("CREATE VIRTUAL TABLE f USING fts5(text, tokenize='porter unicode61 remove_diacritics 2')")
        _SCRATCH.execute("INSERT INTO f (text) VALUES ('AND OR NOT NEAR a b shoes 中文 поиск'), ('x')")
    return _SCRATCH


# -- snippets ------------------------------------------------------------------------


def test_parse_snippet_turns_markers_into_offsets() -> None:
    o, c = SNIPPET_OPEN, SNIPPET_CLOSE
    assert parse_snippet(f"…red {o}running{c} {o}shoes{c} for…") == ("…red running shoes for…", ((5, 12), (13, 18)))
    assert parse_snippet("plain") == ("plain", ())
    assert parse_snippet("") == ("", ())


def test_parse_snippet_survives_stray_markers() -> None:
    o, c = SNIPPET_OPEN, SNIPPET_CLOSE
    assert parse_snippet(f"a{c}b") == ("ab", ())
    assert parse_snippet(f"a{o}bc") == ("abc", ((1, 3),))
    assert parse_snippet(f"{o}{c}x") == ("x", ())
    plain, spans = parse_snippet(f"{o}a{o}b{c}c{c}")
    assert plain == "abc"
    assert all(0 <= s < e <= len(plain) for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


def test_snippet_highlights_point_at_the_matched_words(store: Store) -> None:
    long_text = (
        "This catalog entry describes many things at length before it finally mentions "
        "waterproof hiking boots with a sturdy sole, and then it goes on describing the "
        "warranty, the shipping options and the return policy for a good while longer."
    )
    put(store, ("p1", long_text), ("p2", "Boots for the rain."))
    result = hits(store, "waterproof boots")
    assert [h.id for h in result][0] == 1
    top = result[0]
    assert SNIPPET_OPEN not in top.snippet and SNIPPET_CLOSE not in top.snippet
    assert top.snippet != long_text and "…" in top.snippet  # cut to 16 tokens
    words = [top.snippet[s:e] for s, e in top.highlights]
    assert words == ["waterproof", "boots"]
    assert top.snippet.strip("…") in long_text
    other = result[1]
    assert [other.snippet[s:e] for s, e in other.highlights] == ["Boots"]


def test_snippets_can_be_left_out(store: Store) -> None:
    put(store, ("p1", "red shoes"))
    (hit,) = hits(store, "shoes", snippets=False)
    assert hit.snippet == "" and hit.highlights == ()
    assert hit.score == hits(store, "shoes")[0].score


# -- the index follows every write ---------------------------------------------------


def test_results_follow_upsert_update_and_delete(store: Store) -> None:
    assert found(store, "shoes") == []
    put(store, ("p1", "Running shoes for marathon runners"), ("p2", "A cotton t-shirt"))
    assert found(store, "shoes") == ["p1"]
    assert found(store, "cotton") == ["p2"]

    put(store, ("p1", "Linen pants for warm weather"))  # new text: old words gone, new ones found
    assert found(store, "shoes") == []
    assert found(store, "marathon") == []
    assert found(store, "linen") == ["p1"]

    put(store, ("p1", "Linen pants for warm weather", {"category": "pants"}))  # metadata only
    assert found(store, "linen") == ["p1"]
    assert_index_in_step(Path(store.engine.url.database or ""))

    assert store.delete(["p1"]) == (1, [])
    assert found(store, "linen") == []
    assert found(store, "cotton") == ["p2"]


def test_a_read_transaction_keeps_its_snapshot(store: Store) -> None:
    put(store, ("p1", "red shoes"))
    with store.read() as conn:
        assert [h.id for h in keyword_search(conn, "shoes", 10)] == [1]
        put(store, ("p2", "blue shoes"))
        store.delete(["p1"])
        assert [h.id for h in keyword_search(conn, "shoes", 10)] == [1]  # the same snapshot
    assert found(store, "shoes") == ["p2"]


def test_writes_of_another_program_are_indexed(store: Store, db_path: Path) -> None:
    con = sqlite3.connect(db_path)
    with con:
        con.execute("INSERT INTO documents (external_id, text) VALUES ('a', 'Durable hiking boots')")
        con.execute("INSERT INTO documents (external_id, text) VALUES ('b', 'Soft wool socks')")
    assert found(store, "boots") == ["a"]
    assert found(store, "wool") == ["b"]

    with con:
        con.execute("UPDATE documents SET text = 'Leather sandals' WHERE external_id = 'a'")
    assert found(store, "boots") == []
    assert found(store, "sandals") == ["a"]

    with con:  # not a text change: no second entry (the integrity check would see it)
        con.execute("UPDATE documents SET metadata = '{\"c\": 1}', content_hash = 'h' WHERE external_id = 'a'")
    assert_index_in_step(db_path)
    assert found(store, "sandals") == ["a"]

    with con:  # a new id for the same document
        con.execute("UPDATE documents SET id = 50 WHERE external_id = 'b'")
    assert [h.id for h in hits(store, "wool")] == [50]

    with con:
        con.execute("DELETE FROM documents WHERE external_id = 'a'")
    assert found(store, "sandals") == []

    # A rolled-back write leaves no trace in the index either.
    con.execute("BEGIN")
    con.execute("INSERT INTO documents (external_id, text) VALUES ('c', 'ghost umbrella')")
    con.execute("UPDATE documents SET text = 'ghost' WHERE id = 50")
    con.rollback()
    assert found(store, "umbrella") == []
    assert found(store, "wool") == ["b"]
    con.close()


def test_insert_or_replace_of_an_existing_id_leaves_no_stale_entry(store: Store, db_path: Path) -> None:
    # REPLACE deletes the old row without firing the delete trigger (recursive_triggers
    # is off): the insert trigger sees the id still indexed and rebuilds the index.
    put(store, ("p1", "red shoes"), ("p2", "blue shoes"))
    con = sqlite3.connect(db_path)
    with con:
        con.execute("INSERT OR REPLACE INTO documents (id, external_id, text) VALUES (1, 'p1', 'green hat')")
    con.close()
    assert found(store, "red") == []
    assert found(store, "hat") == ["p1"]
    assert found(store, "shoes") == ["p2"]
    assert_index_in_step(db_path)


# -- matching and ranking ------------------------------------------------------------


def test_porter_stemming(store: Store) -> None:
    put(store, ("runs", "She runs every morning"), ("run", "A long run"), ("running", "Running shoes"), ("x", "Cotton shirt"))
    assert sorted(found(store, "running")) == ["run", "running", "runs"]
    assert sorted(found(store, "runs")) == ["run", "running", "runs"]


def test_case_and_diacritics_are_folded(store: Store) -> None:
    put(store, ("accent", "Le café du coin"), ("plain", "A cafe by the sea"), ("other", "tea house"))
    assert sorted(found(store, "cafe")) == ["accent", "plain"]
    assert sorted(found(store, "café")) == ["accent", "plain"]
    assert sorted(found(store, "CAFÉ")) == ["accent", "plain"]
    assert sorted(found(store, "cafe\u0301")) == ["accent", "plain"]  # decomposed é


def test_bm25_ranking_and_ties_by_id(store: Store) -> None:
    put(
        store,
        ("long", "shoes and a great many other words about clothing, bags, hats and accessories in general"),
        ("repeat", "shoes shoes shoes, more shoes"),
        ("short", "shoes today"),
        ("none1", "linen pants"),
        ("none2", "cotton shirt"),
        ("none3", "leather belt"),
        ("none4", "wool socks"),
    )
    result = hits(store, "shoes")
    ids = found(store, "shoes")
    assert ids[-1] == "long"  # the longest document, one occurrence, ranks last
    assert ids[0] == "repeat"
    assert all(h.score > 0 for h in result)
    assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)
    assert found(store, "shoes", limit=2) == ids[:2]

    # A document matching more of the query's terms ranks above one matching fewer.
    assert found(store, "linen pants")[0] == "none1"

    # Identical texts tie on score and come in id order.
    put(store, ("twin_b", "velvet slippers"), ("twin_a", "velvet slippers"))
    tie = hits(store, "velvet")
    assert len(tie) == 2 and tie[0].score == tie[1].score
    assert [h.id for h in tie] == sorted(h.id for h in tie)
    assert found(store, "velvet") == ["twin_b", "twin_a"]


def test_stopwords_do_not_outrank_content_words(store: Store) -> None:
    put(
        store,
        ("shoes", "Running shoes with cushioning"),
        ("fillers", "What are the best of the best for the rest of the year? What for?"),
        ("x", "cotton shirt"),
    )
    assert found(store, "What are good shoes for jogging?") == ["shoes"]


HOSTILE = [
    '"',
    '""',
    "'",
    "(",
    ")",
    "AND",
    "OR NOT",
    "NEAR(a b)",
    "NEAR(shoes boots, 2)",
    "*",
    "a*",
    "-foo",
    "col:foo",
    "text:shoes",
    "^shoes",
    "shoes + boots",
    "{a b}",
    "[x]",
    "中文 搜索",
    "поиск",
    "بحث",
    "😀🔥",
    "\x00",
    "shoes\x00boots",
    "x" * 10_000,
    " ".join(f"word{i}" for i in range(2_000)),
    ";DROP TABLE documents;--",
    "' OR 1=1 --",
    "\ud800 shoes",
]


@pytest.mark.parametrize("query", HOSTILE, ids=[repr(q[:20]) for q in HOSTILE])
def test_hostile_queries_never_raise(store: Store, query: str) -> None:
    put(
        store,
        ("p1", "Running shoes and boots"),
        ("p2", "中文 搜索 поиск بحث"),
        ("p3", "AND OR NOT NEAR a b text"),
    )
    result = hits(store, query)
    assert isinstance(result, list)
    assert all(isinstance(h, KeywordHit) for h in result)
    assert store.count_documents() == 3


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("^shoes", ["p1"]),
        ("shoes + boots", ["p1"]),
        ("-boots", ["p1"]),  # not a NOT: the term itself
        ("NOT", ["p3"]),
        ("поиск", ["p2"]),
        ("中文 搜索", ["p2"]),
        ("بحث", ["p2"]),
        ("text:shoes", []),  # the phrase "text shoes", not a column filter
        ("zebra", []),
        ("", []),
        ("😀🔥", []),
    ],
)
def test_operators_are_plain_text(store: Store, query: str, expected: list[str]) -> None:
    put(
        store,
        ("p1", "Running shoes and boots"),
        ("p2", "中文 搜索 поиск بحث"),
        ("p3", "AND OR NOT NEAR a b text"),
    )
    assert found(store, query) == expected


def test_limit_zero_and_no_terms_return_nothing(store: Store) -> None:
    put(store, ("p1", "shoes"))
    assert hits(store, "shoes", limit=0) == []
    assert hits(store, "   ") == []


# -- conditions ----------------------------------------------------------------------


def test_condition_restricts_the_documents_searched(store: Store) -> None:
    put(
        store,
        ("a", "shoes shoes shoes", {"category": "sale"}),
        ("b", "shoes shoes", {"category": "new"}),
        ("c", "shoes and socks", {"category": "new"}),
        ("d", "linen pants", {"category": "new"}),
    )
    assert found(store, "shoes") == ["a", "b", "c"]
    ids = {e: doc.id for e in "abcd" if (doc := store.get(e)) is not None}
    assert found(store, "shoes", condition=Document.id.in_([ids["a"], ids["c"]])) == ["a", "c"]
    new = func.json_extract(Document.meta, "$.category") == "new"
    assert found(store, "shoes", condition=new) == ["b", "c"]
    # The condition applies before the limit, not to the top hits.
    assert found(store, "shoes", limit=1, condition=new) == ["b"]
    assert found(store, "shoes", limit=1, condition=Document.meta["category"].as_string() == "new") == ["b"]
    assert found(store, "shoes", condition=Document.external_id == "d") == []


# -- the migration -------------------------------------------------------------------


def _sqlite_names(path: Path, kind: str) -> set[str]:
    con = sqlite3.connect(path)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = ?", (kind,))}
    finally:
        con.close()


def test_upgrade_indexes_existing_documents_and_downgrade_removes_the_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    engine = db.create_store_engine(url)
    db.upgrade(engine, "0001")
    assert db.current_revision(engine) == "0001"
    with engine.connect() as conn, conn.begin():
        conn.execute(
            text("INSERT INTO documents (external_id, text) VALUES (:e, :t)"),
            [{"e": "p1", "t": "Waterproof hiking boots"}, {"e": "p2", "t": "Cotton t-shirt"}],
        )
        assert not keyword_available(conn)

    db.upgrade(engine)
    assert db.current_revision(engine) == db.HEAD_REVISION
    assert _sqlite_names(path, "trigger") == FTS_TRIGGERS | {"documents_log_insert", "documents_log_update", "documents_log_delete"}
    assert "documents_fts" in _sqlite_names(path, "table")
    assert_index_in_step(path)
    with engine.connect() as conn, conn.begin():
        assert keyword_available(conn)
        assert [h.id for h in keyword_search(conn, "boots", 5)] == [1]
        assert [h.id for h in keyword_search(conn, "shirt", 5)] == [2]

    # The models still describe the schema: the FTS tables are not reported as removed.
    cfg = db.alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)

    db.downgrade(engine, "0001")
    assert db.current_revision(engine) == "0001"
    assert not {n for n in _sqlite_names(path, "table") if n.startswith("documents_fts")}
    assert _sqlite_names(path, "trigger") == {"documents_log_insert", "documents_log_update", "documents_log_delete"}
    con = sqlite3.connect(path)
    with con:  # writes work without the index
        con.execute("INSERT INTO documents (external_id, text) VALUES ('p3', 'Wool socks')")
        con.execute("UPDATE documents SET text = 'Rubber boots' WHERE external_id = 'p2'")
        con.execute("DELETE FROM documents WHERE external_id = 'p1'")
    con.close()
    engine.dispose()

    # Opening the store migrates it again and indexes what was written meanwhile.
    store = Store.open(url)
    assert db.current_revision(store.engine) == db.HEAD_REVISION
    assert found(store, "boots") == ["p2"]
    assert found(store, "socks") == ["p3"]
    assert found(store, "shirt") == []
    store.close()
    assert_index_in_step(path)


def test_keyword_search_is_empty_on_other_dialects() -> None:
    class _Dialect:
        name = "postgresql"

    class _Conn:
        dialect = _Dialect()

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no SQL on an unsupported dialect")

    assert keyword_search(_Conn(), "shoes", 10) == []  # type: ignore[arg-type]
    assert keyword_available(_Conn()) is False  # type: ignore[arg-type]
