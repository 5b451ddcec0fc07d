"""Keyword and hybrid search, more like this and vector arithmetic, through the Python
API, the CLI (Click's runner and a real subprocess) and HTTP (in-process), on a real
SQLite file and, for the tests marked ``both_databases``, on PostgreSQL too (FTS5 there,
a generated tsvector column here: see retrieval/store/keyword.py)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.fixtures.databases import admin_connect
from tests.fixtures.stores import write_jsonl

both_databases = pytest.mark.both_databases

PRODUCTS = [
    {"id": "run-1", "text": "Lightweight running shoes with a cushioned sole for road jogging.",
     "metadata": {"category": "footwear", "price": 89}},
    {"id": "run-2", "text": "Trail running shoes, waterproof, aggressive grip.",
     "metadata": {"category": "footwear", "price": 129}},
    {"id": "boot-1", "text": "Leather hiking boots with Gore-Tex lining.", "metadata": {"category": "footwear",
                                                                                         "price": 210}},
    {"id": "sock-1", "text": "Merino wool running socks.", "metadata": {"category": "apparel", "price": 15}},
    {"id": "tee-1", "text": "Cotton t-shirt for everyday wear.", "metadata": {"category": "apparel", "price": 20}},
    {"id": "bag-1", "text": "A laptop bag that protects your electronics.", "metadata": {"category": "bags",
                                                                                         "price": 60}},
    {"id": "cafe-1", "text": "Café au lait mug, crème colour.", "metadata": {"category": "kitchen", "price": 9}},
]

HOSTILE = ['"', '""', "'", "(", ")", "AND", "OR NOT", "NEAR(a b)", "*", "a*", "-shoes", "text:shoes", "col:x",
           "^shoes", "shoes + boots", "{a b}", "[x]", "中文 搜索", "поиск обуви", "بحث", "😀🔥", "shoes\x00boots",
           "x" * 5000, ";DROP TABLE documents;--", "running AND (shoes OR", "NOT", "\\", "%_", "\ud800"]


@pytest.fixture
def products(make_retriever: Any) -> Any:
    r = make_retriever()
    r.ingest(PRODUCTS)
    return r


@contextmanager
def another_program(url: str) -> Iterator[Callable[[str], None]]:
    """Plain SQL of another program on the store's database (sqlite3 or psycopg), each
    statement committed at once."""
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))

        def execute(sql: str) -> None:
            with con:
                con.execute(sql)
    else:
        con = admin_connect(url)

        def execute(sql: str) -> None:
            con.execute(sql)
    try:
        yield execute
    finally:
        con.close()


# -- keyword search ----------------------------------------------------------------------


@both_databases
def test_keyword_results_are_never_stale(products: Any) -> None:
    """Found the moment ingest returns (no sync), gone on delete; rows written by plain
    sqlite3 (or psycopg) too."""
    assert products.search("espresso", mode="keyword") == []
    products.ingest([{"id": "esp-1", "text": "Espresso machine with milk frother"}], sync=False)
    hits = products.search("espresso", mode="keyword")
    assert [h.id for h in hits] == ["esp-1"] and hits[0].mode == "keyword"
    assert hits[0].snippet is not None and hits[0].snippet[slice(*hits[0].highlights[0])].lower() == "espresso"
    products.delete(["esp-1"], sync=False)
    assert products.search("espresso", mode="keyword") == []

    with another_program(products.store.url) as execute:
        execute("INSERT INTO documents (external_id, text, metadata) VALUES ('k-1', 'a kettle for tea', '{}')")
        assert [h.id for h in products.search("kettles", mode="keyword")] == ["k-1"]  # stemmed
        execute("UPDATE documents SET text = 'a teapot' WHERE external_id = 'k-1'")
        assert products.search("kettle", mode="keyword") == []
        assert [h.id for h in products.search("teapot", mode="hybrid", k=1)] == ["k-1"]
        execute("DELETE FROM documents WHERE external_id = 'k-1'")
    assert products.search("teapot", mode="keyword") == []


@both_databases
def test_keyword_stems_folds_diacritics_and_filters(products: Any) -> None:
    if products.store.engine.dialect.name == "sqlite":
        assert [h.id for h in products.search("cafe creme", mode="keyword")] == ["cafe-1"]
    else:  # PostgreSQL's 'english' configuration folds case but keeps diacritics
        assert [h.id for h in products.search("CAFÉ CRÈME", mode="keyword")] == ["cafe-1"]
        assert products.search("cafe creme", mode="keyword") == []
    assert {h.id for h in products.search("run", mode="keyword", k=10)} == {"run-1", "run-2", "sock-1"}
    assert [h.id for h in products.search("running", mode="keyword", where={"category": "apparel"})] == ["sock-1"]
    assert products.search("running", mode="keyword", where={"price": {"$gt": 1000}}) == []


@both_databases
@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
def test_hostile_query_strings(products: Any, mode: str) -> None:
    # One store for all the strings: a store per string would cost 0.4 s each on PostgreSQL.
    for query in HOSTILE:
        hits = products.search(query, k=5, mode=mode)
        assert isinstance(hits, list) and all(h.mode == mode for h in hits), query


@both_databases
def test_hybrid_fuses_both_rankings(products: Any) -> None:
    hits = products.search("gore-tex boots", k=7, mode="hybrid")
    assert hits[0].id == "boot-1"
    top = hits[0]
    assert top.dense_rank is not None and top.keyword_rank == 1 and top.snippet is not None
    assert top.score == pytest.approx(1 / (60 + top.dense_rank) + 1 / (60 + top.keyword_rank))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    # Documents with no keyword match still come from the dense list.
    assert any(h.keyword_rank is None and h.dense_rank is not None for h in hits)
    convex = products.search("gore-tex boots", k=3, mode="hybrid", alpha=0.0)  # keyword scores only
    assert convex[0].id == "boot-1" and convex[0].score == pytest.approx(1.0)
    with pytest.raises(Exception, match="alpha"):
        products.search("boots", mode="hybrid", alpha=2)


# -- more like this and vector arithmetic ------------------------------------------------


@both_databases
def test_similar_uses_the_stored_vector_and_leaves_the_document_out(products: Any) -> None:
    embedded_before = products.store.stats(products.encoder.model_key)["stored_vectors"]
    hits = products.similar("run-1", k=3)
    assert "run-1" not in [h.id for h in hits] and len(hits) == 3
    assert products.store.stats(products.encoder.model_key)["stored_vectors"] == embedded_before
    doc_vec = products.encoder.encode(["Lightweight running shoes with a cushioned sole for road jogging."])[0]
    other = products.encoder.encode([p["text"] for p in PRODUCTS if p["id"] == hits[0].id])[0]
    assert hits[0].score == pytest.approx(float(doc_vec @ other), abs=1e-5)
    assert {h.id for h in products.similar("run-1", k=10, where={"category": "apparel"})} == {"sock-1", "tee-1"}
    from retrieval.errors import NotFoundError

    with pytest.raises(NotFoundError, match="nope"):
        products.similar("nope")


@both_databases
def test_like_and_unlike_examples(products: Any) -> None:
    hits = products.search(None, k=3, like=["run-1", "run-2"], unlike=["boot-1"])
    assert not {"run-1", "run-2", "boot-1"} & {h.id for h in hits}
    assert "run-1" in [h.id for h in products.search(None, k=3, like=["run-1"], include_examples=True)]
    with pytest.raises(Exception, match="cancel out"):
        products.search("shoes", minus=["shoes"])
    with pytest.raises(Exception, match="dense mode"):
        products.search("shoes", mode="keyword", plus=["boots"])


WORDS = ["queen", "king", "woman", "man", "monarch", "lady", "princess", "prince", "throne", "crown", "castle",
         "girl", "boy", "duke", "palace", "horse", "apple", "river", "teacher", "doctor"]


@pytest.fixture
def words(real_store_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    from retrieval.cli import cli

    path = write_jsonl(tmp_path / "words.jsonl", [{"id": w, "text": w} for w in WORDS])
    result = CliRunner().invoke(cli, ["ingest", str(path)])
    assert result.exit_code == 0, result.output
    return real_store_env


def test_king_minus_man_plus_woman_is_queen(words: dict[str, str]) -> None:
    from retrieval.cli import cli

    result = CliRunner().invoke(cli, ["search", "king", "--minus", "man", "--plus", "woman", "-k", "6", "--json"])
    assert result.exit_code == 0, result.output
    ranked = [r["id"] for r in json.loads(result.output)["results"] if r["id"] not in ("king", "man", "woman")]
    assert ranked[0] == "queen", ranked
    # As a real subprocess, in the plain output.
    proc = subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "king", "--minus", "man", "--plus",
                           "woman", "-k", "6"], capture_output=True, text=True, env=_env(words), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert [ln.split()[2] for ln in proc.stdout.splitlines() if ln.split()[2] not in ("king", "man", "woman")][0] \
        == "queen"


def _env(store: dict[str, str]) -> dict[str, str]:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}, **store, "HF_HUB_OFFLINE": "1"}


def test_arithmetic_and_similar_over_http(words: dict[str, str]) -> None:
    from fastapi.testclient import TestClient

    from retrieval.config import load_settings
    from retrieval.http import create_app
    from retrieval.retriever import Retriever

    retriever = Retriever.from_settings(load_settings(environ=words))
    app = create_app(retriever, api_key=None, run_sync_thread=False)
    with TestClient(app) as tc:
        body = tc.post("/v1/search", json={"query": "king", "minus": ["man"], "plus": ["woman"], "k": 6}).json()
        ranked = [r["id"] for r in body["results"] if r["id"] not in ("king", "man", "woman")]
        assert ranked[0] == "queen", body
        like = tc.post("/v1/search", json={"like": ["king"], "k": 3}).json()["results"]
        similar = tc.get("/v1/documents/king/similar", params={"k": 3}).json()["results"]
        assert [r["id"] for r in similar] == [r["id"] for r in like] and "king" not in [r["id"] for r in similar]
        assert similar[0]["id"] in ("queen", "monarch", "prince", "throne", "crown")
        filtered = tc.get("/v1/documents/king/similar", params={"k": 3, "where": '{"$not": {"id": 1}}'})
        assert filtered.status_code == 200
        missing = tc.get("/v1/documents/nobody/similar")
        assert missing.status_code == 404 and "nobody" in missing.json()["message"]
        bad = tc.get("/v1/documents/king/similar", params={"where": '{"a": {"$oops": 1}}'})
        assert bad.status_code == 400 and "a.$oops: unknown operator" in bad.json()["message"]
    retriever.close()


# -- the CLI -------------------------------------------------------------------------------


@pytest.fixture
def product_store(store_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    from retrieval.cli import cli

    result = CliRunner().invoke(cli, ["ingest", str(write_jsonl(tmp_path / "p.jsonl", PRODUCTS))])
    assert result.exit_code == 0, result.output
    return store_env


@both_databases
def test_cli_where_mode_and_similar(product_store: dict[str, str]) -> None:
    from retrieval.cli import cli

    runner = CliRunner()
    out = runner.invoke(cli, ["search", "shoes", "--where", "category=footwear", "--where", "price<150", "--json",
                              "-k", "10"])
    assert out.exit_code == 0, out.output
    assert sorted(r["id"] for r in json.loads(out.output)["results"]) == ["run-1", "run-2"]
    same = runner.invoke(cli, ["search", "shoes", "--where",
                               '{"category": "footwear", "price": {"$lt": 150}}', "--json", "-k", "10"])
    assert json.loads(same.output)["results"] == json.loads(out.output)["results"]

    kw = runner.invoke(cli, ["search", "waterproof grip", "--mode", "keyword", "--json"])
    rows = json.loads(kw.output)["results"]
    assert [r["id"] for r in rows] == ["run-2"] and rows[0]["mode"] == "keyword" and rows[0]["highlights"]
    plain = runner.invoke(cli, ["search", "waterproof grip", "--mode", "keyword"])
    assert "[waterproof]" in plain.output and "run-2" in plain.output

    hy = runner.invoke(cli, ["search", "gore-tex", "--mode", "hybrid", "-k", "3"])
    assert hy.exit_code == 0 and "boot-1" in hy.output.splitlines()[0] and "keyword #1" in hy.output

    sim = runner.invoke(cli, ["similar", "run-1", "-k", "2", "--json"])
    assert sim.exit_code == 0, sim.output
    assert "run-1" not in [r["id"] for r in json.loads(sim.output)["results"]]
    sim_plain = runner.invoke(cli, ["similar", "run-1", "-k", "2", "--where", "category=apparel"])
    assert sim_plain.exit_code == 0 and "sock-1" in sim_plain.output and "run-2" not in sim_plain.output
    missing = runner.invoke(cli, ["similar", "nobody"])
    assert missing.exit_code == 1 and "no document with id 'nobody'" in missing.output


@pytest.mark.parametrize(("where", "message"), [
    ('{"price": {"$lt": [1]}}', "price.$lt: $lt takes a number or a string, got a list"),
    ("price<<1", "expected one operator"),
    ('{"price": ', "where: not valid JSON"),
    ('{"$nor": []}', "$nor: unknown operator"),
])
def test_cli_bad_filters_exit_2_with_one_line(product_store: dict[str, str], where: str, message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "retrieval.cli", "search", "shoes", "--where", where],
                          capture_output=True, text=True, env=_env(product_store), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


@both_databases
def test_index_field_command(product_store: dict[str, str]) -> None:
    from retrieval.cli import cli

    runner = CliRunner()
    made = runner.invoke(cli, ["index-field", "category"])
    assert made.exit_code == 0 and "Indexed metadata field category" in made.output
    listed = runner.invoke(cli, ["index-field", "--json"])
    assert [f["field"] for f in json.loads(listed.output)["indexes"]] == ["category"]
    assert runner.invoke(cli, ["index-field", "bad'name"]).exit_code == 2
    dropped = runner.invoke(cli, ["index-field", "category", "--drop"])
    assert dropped.exit_code == 0 and "No metadata field" in runner.invoke(cli, ["index-field"]).output


def test_verify_reports_a_damaged_keyword_index_and_reindex_repairs_it(product_store: dict[str, str]) -> None:
    from retrieval.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["verify"]).exit_code == 0
    con = sqlite3.connect(product_store["RETRIEVE_DATABASE_URL"].removeprefix("sqlite:///"))
    with con:  # another program damages the derived keyword index
        con.execute("INSERT INTO documents_fts(documents_fts, rowid, text) "
                    "SELECT 'delete', id, text FROM documents WHERE external_id = 'run-2'")
    con.close()
    damaged = runner.invoke(cli, ["verify"])
    assert damaged.exit_code == 1 and "missing from the keyword index" in damaged.output
    assert runner.invoke(cli, ["reindex"]).exit_code == 0
    assert runner.invoke(cli, ["verify"]).exit_code == 0
    found = runner.invoke(cli, ["search", "waterproof", "--mode", "keyword", "--json"])
    assert [r["id"] for r in json.loads(found.output)["results"]] == ["run-2"]


@pytest.mark.parametrize("db_backend", ["postgresql"], indirect=True)
def test_verify_and_reindex_on_postgresql(product_store: dict[str, str]) -> None:
    """The keyword index is a generated column: verify finds nothing to report, reindex
    has nothing to rebuild, and another program's writes are searchable at once."""
    from retrieval.cli import cli

    runner = CliRunner()
    assert runner.invoke(cli, ["verify"]).exit_code == 0
    with another_program(product_store["RETRIEVE_DATABASE_URL"]) as execute:
        execute("UPDATE documents SET text = 'Trail shoes, waterproof, great grip' WHERE external_id = 'run-2'")
    assert runner.invoke(cli, ["reindex"]).exit_code == 0
    assert runner.invoke(cli, ["verify"]).exit_code == 0
    found = runner.invoke(cli, ["search", "waterproof grip", "--mode", "keyword", "--json"])
    rows = json.loads(found.output)["results"]
    assert [r["id"] for r in rows] == ["run-2"] and rows[0]["text"].startswith("Trail shoes")


@both_databases
def test_the_min_score_setting_is_a_cosine_for_dense_mode_only(make_retriever: Any) -> None:
    r = make_retriever(min_score=0.99)
    r.ingest(PRODUCTS)
    assert r.search("waterproof trail shoes") == []  # no cosine reaches 0.99
    assert [h.id for h in r.search("waterproof trail shoes", mode="keyword", k=1)] == ["run-2"]
    assert r.search("waterproof trail shoes", mode="hybrid", k=1)[0].id == "run-2"
    assert r.search("waterproof trail shoes", mode="hybrid", min_score=1.0) == []  # given: the fused score
    with pytest.raises(Exception, match="hybrid"):
        r.search("shoes", alpha=0.5)
    # The same over HTTP: the service leaves the setting to the retriever.
    from fastapi.testclient import TestClient

    from retrieval.http import create_app

    with TestClient(create_app(r, api_key=None, run_sync_thread=False)) as tc:
        assert tc.post("/v1/search", json={"query": "waterproof trail shoes"}).json()["results"] == []
        body = tc.post("/v1/search", json={"query": "waterproof trail shoes", "mode": "hybrid", "k": 1}).json()
        assert [h["id"] for h in body["results"]] == ["run-2"]


def test_keyword_never_counts_an_indexed_row_without_its_document(make_retriever: Any) -> None:
    """Another program's INSERT OR REPLACE that moves an external id to a new row deletes
    the old row without firing a delete trigger; keyword search still returns k documents."""
    r = make_retriever()
    r.ingest([{"id": f"h{i}", "text": f"red hat number {i}"} for i in range(4)])
    con = sqlite3.connect(r.store.url.removeprefix("sqlite:///"))
    with con:
        con.execute("INSERT OR REPLACE INTO documents (external_id, text, metadata) VALUES ('h0', 'red hat again', '{}')")
    con.close()
    hits = r.search("hat", k=4, mode="keyword")
    assert sorted(h.id for h in hits) == ["h0", "h1", "h2", "h3"]
    assert [h.id for h in r.search("again", k=4, mode="keyword")] == ["h0"]
