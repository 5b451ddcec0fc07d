"""The keyword indexes (SQLite: FTS5, revision 0002; PostgreSQL: a generated tsvector
column, revision 0003) and the store-level keyword search.

The tests marked ``both_databases`` run on SQLite and on PostgreSQL; the rest are about
FTS5 (its query syntax, its triggers, its integrity check) or PostgreSQL only.

The FTS5 index is kept in step by triggers, so it is checked after writes of this service
and of a plain ``sqlite3`` connection alike, and after every test that writes, FTS5's own
integrity check compares it token by token with ``documents``. PostgreSQL computes the
tsvector column with every write of a row, whoever writes it.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from retrieval.filters import parse
from retrieval.store import db
from retrieval.store.filters import compile_filter
from retrieval.store.keyword import (
    keyword_available,
    keyword_problems,
    keyword_search,
    keyword_snippets,
    rebuild_keyword_index,
    ts_query,
)
from retrieval.store.models import Document
from retrieval.store.records import NewDocument
from retrieval.store.repository import Store
from retrieval.store.terms import MAX_TERMS, SNIPPET_CLOSE, SNIPPET_OPEN, KeywordHit, fts_query, parse_snippet, query_terms
from tests.fixtures.databases import admin_connect

FTS_TRIGGERS = {"documents_fts_insert", "documents_fts_delete", "documents_fts_update"}


both_databases = pytest.mark.both_databases


@pytest.fixture
def db_path(database_url: str) -> Path:
    """The SQLite file of the store (tests that write it with ``sqlite3`` run on SQLite only)."""
    assert database_url.startswith("sqlite:///")
    return Path(make_url(database_url).database or "")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.open(database_url)
    yield s
    check_index(s)
    s.close()


def check_index(store: Store) -> None:
    """FTS5's integrity check on SQLite; on PostgreSQL, that verify finds no problem."""
    if store.engine.dialect.name == "sqlite":
        assert_index_in_step(Path(store.engine.url.database or ""))
    else:
        with store.connection() as conn:
            assert keyword_problems(conn) == []


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
    with store.connection() as conn:
        return keyword_search(conn, query, limit, **kwargs)


def found(store: Store, query: str, limit: int = 10, **kwargs: Any) -> list[str]:
    """External ids of the hits, best first."""
    with store.read() as snap:
        result = keyword_search(snap.conn, query, limit, **kwargs)
        docs = snap.documents([h.id for h in result])
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


@both_databases
def test_snippet_highlights_point_at_the_matched_words(store: Store) -> None:
    long_text = (
        "This catalog entry describes many things at length before it finally mentions "
        "waterproof hiking boots with a sturdy sole, and then it goes on describing the "
        "warranty, the shipping options and the return policy for a good while longer."
    )
    put(store, ("p1", long_text), ("p2", "Boots for the rain."))
    # Which ranks first differs: BM25 weighs the rarer "waterproof", ts_rank_cd the shorter text.
    result = {h.id: h for h in hits(store, "waterproof boots")}
    assert set(result) == {1, 2}
    top = result[1]
    assert SNIPPET_OPEN not in top.snippet and SNIPPET_CLOSE not in top.snippet
    assert top.snippet != long_text and top.snippet.endswith("…")  # cut to 16 tokens
    assert len(top.snippet.split()) <= 16
    words = [top.snippet[s:e] for s, e in top.highlights]
    assert words == ["waterproof", "boots"]
    assert top.snippet.strip("…") in long_text
    other = result[2]
    assert other.snippet == "Boots for the rain."  # the whole text: no ellipsis
    assert [other.snippet[s:e] for s, e in other.highlights] == ["Boots"]
    # keyword_snippets() gives the same for the ids asked for that match.
    with store.connection() as conn:
        assert keyword_snippets(conn, "waterproof boots", [2, 1, 99]) == {
            i: (h.snippet, h.highlights) for i, h in result.items()}
        assert keyword_snippets(conn, "zebra", [1, 2]) == {}
        assert keyword_snippets(conn, "boots", []) == {}
        assert keyword_snippets(conn, "", [1]) == {}


@both_databases
def test_snippets_can_be_left_out(store: Store) -> None:
    put(store, ("p1", "red shoes"))
    (hit,) = hits(store, "shoes", snippets=False)
    assert hit.snippet == "" and hit.highlights == ()
    assert hit.score == hits(store, "shoes")[0].score


# -- the index follows every write ---------------------------------------------------


@both_databases
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
    check_index(store)

    assert store.delete(["p1"]) == (1, [])
    assert found(store, "linen") == []
    assert found(store, "cotton") == ["p2"]


@both_databases
def test_a_read_transaction_keeps_its_snapshot(store: Store) -> None:
    put(store, ("p1", "red shoes"))
    with store.connection() as conn:
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


@both_databases
def test_porter_stemming(store: Store) -> None:
    put(store, ("runs", "She runs every morning"), ("run", "A long run"), ("running", "Running shoes"), ("x", "Cotton shirt"))
    assert sorted(found(store, "running")) == ["run", "running", "runs"]
    assert sorted(found(store, "runs")) == ["run", "running", "runs"]


def test_case_and_diacritics_are_folded(store: Store) -> None:  # SQLite: remove_diacritics 2
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


@both_databases
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


CORPUS = [("p1", "Running shoes and boots"), ("p2", "中文 搜索 поиск بحث"), ("p3", "AND OR NOT NEAR a b text")]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A store holding :data:`CORPUS`, one per database for the module: the query tests
    only read, and a database per query would cost 0.3 s each on PostgreSQL."""
    name = ""
    if request.param == "postgresql":
        admin_url: str = request.getfixturevalue("postgres_admin_url")
        name = f"t_corpus_{uuid.uuid4().hex[:12]}"
        with admin_connect(admin_url) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('corpus') / 'k.db'}"
    s = Store.open(url)
    try:
        put(s, *CORPUS)
        yield s
        check_index(s)
    finally:
        s.close()
        if name:
            with admin_connect(admin_url) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("query", HOSTILE, ids=[repr(q[:20]) for q in HOSTILE])
def test_hostile_queries_never_raise(corpus: Store, query: str) -> None:
    result = hits(corpus, query)
    assert isinstance(result, list)
    assert all(isinstance(h, KeywordHit) for h in result)
    assert found(corpus, query, snippets=False) == found(corpus, query)
    assert corpus.count_documents() == 3


# Where PostgreSQL's answer differs from :func:`test_operators_are_plain_text`'s.
PG_EXPECTED: dict[str, list[str]] = {"NOT": []}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("^shoes", ["p1"]),
        ("shoes + boots", ["p1"]),
        ("-boots", ["p1"]),  # not a NOT: the term itself
        ("NOT", ["p3"]),  # on PostgreSQL a stopword, which the tsvector does not hold (see PG_EXPECTED)
        ("поиск", ["p2"]),
        ("中文 搜索", ["p2"]),
        ("بحث", ["p2"]),
        ("text:shoes", []),  # the phrase "text shoes", not a column filter
        ("zebra", []),
        ("", []),
        ("😀🔥", []),
    ],
)
def test_operators_are_plain_text(corpus: Store, query: str, expected: list[str]) -> None:
    if corpus.engine.dialect.name == "postgresql":
        expected = PG_EXPECTED.get(query, expected)
    assert found(corpus, query) == expected


@both_databases
def test_limit_zero_and_no_terms_return_nothing(store: Store) -> None:
    put(store, ("p1", "shoes"))
    assert hits(store, "shoes", limit=0) == []
    assert hits(store, "   ") == []


# -- conditions ----------------------------------------------------------------------


@both_databases
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
    new = where(store, {"category": "new"})
    assert found(store, "shoes", condition=new) == ["b", "c"]
    # The condition applies before the limit, not to the top hits.
    assert found(store, "shoes", limit=1, condition=new) == ["b"]
    assert found(store, "shoes", limit=1, condition=Document.meta["category"].as_string() == "new") == ["b"]
    assert found(store, "shoes", condition=Document.external_id == "d") == []
    assert found(store, "socks shoes", condition=where(store, {"category": {"$in": ["sale", "x"]}})) == ["a"]
    assert sorted(found(store, "socks pants", condition=where(store, {"$not": {"category": "sale"}}))) == ["c", "d"]


def where(store: Store, spec: dict[str, Any]) -> Any:
    """The SQL condition of a metadata filter, as the search pipeline compiles it."""
    parsed = parse(spec)
    assert parsed is not None
    return compile_filter(parsed, store.engine.dialect.name)


def test_json_extract_condition_on_sqlite(store: Store) -> None:
    put(store, ("a", "shoes", {"category": "sale"}), ("b", "shoes", {"category": "new"}))
    assert found(store, "shoes", condition=func.json_extract(Document.meta, "$.category") == "new") == ["b"]


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
        name = "mysql"

    class _Conn:
        dialect = _Dialect()

        def execute(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("no SQL on an unsupported dialect")

        exec_driver_sql = execute

    conn: Any = _Conn()
    assert keyword_search(conn, "shoes", 10) == []
    assert keyword_available(conn) is False
    assert keyword_snippets(conn, "shoes", [1]) == {}
    assert keyword_problems(conn) == []
    rebuild_keyword_index(conn)


# -- PostgreSQL ----------------------------------------------------------------------

postgresql_only = pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)


def test_ts_query_binds_every_term() -> None:
    from sqlalchemy.dialects import postgresql

    assert ts_query("") is None and ts_query("\x00 😀 --") is None
    q = ts_query('a"b NEAR(x  x\x00y \ud800 -foo:*bar !a&b|c')
    assert q is not None
    compiled = q.compile(dialect=postgresql.dialect())
    sql = str(compiled)
    assert sql.count("phraseto_tsquery('english'::regconfig, %(kw_term_") == 6
    assert sql.count(" || ") == 5
    assert not {"NEAR", "foo", "bar", "&", "!", ":*", "|"} & set(sql.replace("(", " ").replace(")", " ").split())
    assert compiled.params == {"kw_term_0": 'a"b', "kw_term_1": "NEAR(x", "kw_term_2": "x", "kw_term_3": "y",
                               "kw_term_4": "foo:*bar", "kw_term_5": "a&b|c"}
    decomposed = ts_query("cafe\u0301")
    assert decomposed is not None
    assert decomposed.compile(dialect=postgresql.dialect()).params == {"kw_term_0": "caf\u00e9"}  # NFC


@postgresql_only
def test_writes_of_another_program_are_found_at_once_on_postgresql(store: Store, database_url: str) -> None:
    """The tsvector is a generated column: a row written by any program is searchable the
    moment it commits, and never before."""
    with admin_connect(database_url) as con:
        con.execute("INSERT INTO documents (external_id, text) VALUES ('a', 'Durable hiking boots')")
        con.execute("INSERT INTO documents (external_id, text, metadata) VALUES ('b', 'Soft wool socks', '{}')")
        assert found(store, "boots") == ["a"]
        assert found(store, "wool") == ["b"]

        con.execute("UPDATE documents SET text = 'Leather sandals' WHERE external_id = 'a'")
        assert found(store, "boots") == []
        assert found(store, "sandals") == ["a"]

        con.execute("UPDATE documents SET metadata = '{\"c\": 1}', content_hash = 'h' WHERE external_id = 'a'")
        assert found(store, "sandals") == ["a"]

        con.execute("UPDATE documents SET id = 50 WHERE external_id = 'b'")
        assert [h.id for h in hits(store, "wool")] == [50]

        con.execute("DELETE FROM documents WHERE external_id = 'a'")
        assert found(store, "sandals") == []

        # Uncommitted and rolled-back writes are not seen.
        with pytest.raises(RuntimeError, match="roll back"), con.transaction():
            con.execute("INSERT INTO documents (external_id, text) VALUES ('c', 'ghost umbrella')")
            con.execute("UPDATE documents SET text = 'ghost' WHERE id = 50")
            assert found(store, "umbrella") == []
            assert found(store, "wool") == ["b"]
            raise RuntimeError("roll back")
        assert found(store, "umbrella") == []
        assert found(store, "wool") == ["b"]
        (written,) = con.execute("SELECT text_search::text FROM documents WHERE id = 50").fetchone()
        assert written == "'sock':3 'soft':1 'wool':2"


@postgresql_only
def test_english_stemming_and_folding_on_postgresql(store: Store) -> None:
    put(store, ("runs", "She runs every morning"), ("run", "A long run"), ("running", "Running shoes"),
        ("ran", "He ran"), ("accent", "Le café du coin"), ("plain", "A cafe by the sea"), ("x", "Cotton shirt"))
    assert sorted(found(store, "running")) == ["run", "running", "runs"]
    assert sorted(found(store, "RUNS")) == ["run", "running", "runs"]
    assert found(store, "shoe") == ["running"]  # plural and singular stem alike
    # Case is folded and a decomposed é is normalised, but diacritics are kept (no
    # unaccent in the 'english' configuration), unlike SQLite's remove_diacritics.
    assert found(store, "CAFÉ") == ["accent"]
    assert found(store, "cafe\u0301") == ["accent"]
    assert found(store, "cafe") == ["plain"]
    # Stopwords are not in the tsvector: a query of stopwords only finds nothing.
    assert found(store, "The Who") == [] and found(store, "by the") == []
    assert found(store, "t-shirt") == []  # a phrase: "t shirt", not any of its parts
    put(store, ("tee", "A cotton T-shirt"))
    assert found(store, "t-shirt") == ["tee"]


@postgresql_only
def test_ts_rank_cd_ranking_and_ties_by_id(store: Store) -> None:
    put(
        store,
        ("long", "shoes and a great many other words about clothing, bags, hats and accessories in general"),
        ("repeat", "shoes shoes shoes, more shoes"),
        ("short", "shoes today"),
        ("pair", "red shoes"),
        ("none1", "linen pants"),
        ("none2", "linen shirt"),
    )
    result = hits(store, "shoes")
    assert found(store, "shoes") == ["repeat", "short", "pair", "long"]  # more matches, then shorter text
    assert all(h.score > 0 for h in result)
    assert [h.score for h in result] == sorted((h.score for h in result), reverse=True)
    assert result[1].score == result[2].score and result[1].id < result[2].id  # a tie, by id
    assert found(store, "shoes", limit=2) == ["repeat", "short"]
    assert [h.score for h in hits(store, "shoes", snippets=False)] == [h.score for h in result]
    # A document matching more of the query's terms ranks above one matching fewer.
    assert found(store, "linen pants") == ["none1", "none2"]
    assert found(store, "pants linen") == ["none1", "none2"]


@postgresql_only
def test_verify_and_reindex_on_postgresql(store: Store, database_url: str) -> None:
    put(store, ("p1", "red shoes"))
    with store.write() as conn:
        rebuild_keyword_index(conn)  # nothing to rebuild: a generated column
    with store.connection() as conn:
        assert keyword_available(conn)
        assert keyword_problems(conn) == []
    with admin_connect(database_url) as con:
        con.execute("DROP INDEX ix_documents_text_search")
    assert found(store, "shoes") == ["p1"]  # slower, not wrong
    with store.connection() as conn:
        assert keyword_problems(conn) == [
            "the GIN index ix_documents_text_search is missing: keyword search reads every document "
            "(revision 0003 creates it)"]
    with admin_connect(database_url) as con:
        con.execute("ALTER TABLE documents DROP COLUMN text_search")
    with store.connection() as conn:
        assert not keyword_available(conn)
        assert keyword_problems(conn) == [
            "documents has no text_search column: keyword search cannot run (revision 0003 adds it)"]
    with admin_connect(database_url) as con:  # check_index() after the test expects it back
        con.execute("ALTER TABLE documents ADD COLUMN text_search tsvector "
                    "GENERATED ALWAYS AS (to_tsvector('english'::regconfig, text)) STORED")
        con.execute("CREATE INDEX ix_documents_text_search ON documents USING gin (text_search)")
    assert found(store, "shoes") == ["p1"]


@postgresql_only
def test_upgrade_to_0003_makes_existing_documents_searchable(database_url: str) -> None:
    url = database_url
    engine = db.create_store_engine(url)
    db.upgrade(engine, "0002")
    with engine.connect() as conn, conn.begin():
        conn.execute(
            text("INSERT INTO documents (external_id, text) VALUES (:e, :t)"),
            [{"e": "p1", "t": "Waterproof hiking boots"}, {"e": "p2", "t": "Cotton t-shirt"}],
        )
        assert not keyword_available(conn)
    db.upgrade(engine)
    with engine.connect() as conn, conn.begin():
        assert keyword_available(conn)
        assert keyword_problems(conn) == []
        assert [h.id for h in keyword_search(conn, "boots", 5)] == [1]
        assert [h.id for h in keyword_search(conn, "shirts", 5)] == [2]
        plan = "\n".join(conn.execute(text("EXPLAIN SELECT id FROM documents WHERE text_search @@ "
                                            "phraseto_tsquery('english', 'boots')")).scalars())
    db.downgrade(engine, "0002")
    with engine.connect() as conn, conn.begin():
        assert not keyword_available(conn)
        conn.execute(text("INSERT INTO documents (external_id, text) VALUES ('p3', 'Wool socks')"))
        assert conn.execute(select(func.count()).select_from(Document)).scalar() == 3
    engine.dispose()
    assert "text_search" in plan
    store = Store.open(url)  # migrates again: the column is computed for every row
    try:
        assert found(store, "socks") == ["p3"]
        assert found(store, "boots") == ["p1"]
    finally:
        store.close()


@postgresql_only
def test_no_text_makes_a_postgresql_error(store: Store) -> None:
    """Whatever the text (control characters, lone surrogates, any script), a search and
    its snippets run: nothing reaches tsquery syntax, and nothing psycopg cannot send."""
    put(store, *CORPUS)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.text(alphabet=st.characters(exclude_categories=()), max_size=120))
    def search(query: str) -> None:
        with store.connection() as conn:
            result = keyword_search(conn, query, 5)
            assert keyword_snippets(conn, query, [h.id for h in result]) == {
                h.id: (h.snippet, h.highlights) for h in result}

    search()
