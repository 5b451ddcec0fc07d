"""Metadata filters: the language (valid and invalid expressions), its typed semantics in
SQLite, and filtered search against brute force over the matching documents, on exact
(flat, segmented, with a backlog) and approximate (HNSW) indexes."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.filters import FilterError, from_cli, parse

HASH = "hash-384"

# -- the language ----------------------------------------------------------------------

DOCS = [
    {"id": "a", "text": "trail running shoes", "metadata": {"category": "footwear", "price": 80, "tags": "sale",
                                                             "specs": {"weight_g": 240, "brand": "acme"}, "stock": True}},
    {"id": "b", "text": "leather hiking boots", "metadata": {"category": "footwear", "price": 150.5,
                                                              "specs": {"weight_g": 900}, "stock": False}},
    {"id": "c", "text": "wool socks", "metadata": {"category": "apparel", "price": 12, "tags": None, "stock": True}},
    {"id": "d", "text": "rain jacket", "metadata": {"category": "apparel", "price": "99", "stock": 1}},
    {"id": "e", "text": "water bottle", "metadata": {}},
    {"id": "f", "text": "Café crème", "metadata": {"category": "Café", "price": 3, "n": {"deep": {"er": "x"}}}},
]

VALID = [
    ({"category": "footwear"}, "ab"),
    ({"category": {"$eq": "footwear"}}, "ab"),
    ({"category": "Café"}, "f"),
    ({"category": "cafe"}, ""),  # equality is exact: no case or accent folding
    ({"price": {"$lt": 100}}, "acf"),  # "99" is a string: not a number below 100
    ({"price": {"$lt": "999"}}, "d"),  # strings compare with strings only
    ({"price": {"$gte": 80, "$lte": 150.5}}, "ab"),
    ({"price": {"$gt": 150}}, "b"),
    ({"price": 150.5}, "b"),
    ({"price": 12.0}, "c"),  # 12 and 12.0 are the same number
    ({"price": {"$ne": 80}}, "bcdef"),  # $ne matches where the field is missing
    ({"category": "footwear", "price": {"$lt": 100}}, "a"),
    ({"category": {"$in": ["apparel", "Café"]}}, "cdf"),
    ({"category": {"$nin": ["apparel", "Café"]}}, "abe"),
    ({"category": {"$in": []}}, ""),
    ({"category": {"$nin": []}}, "abcdef"),
    ({"price": {"$in": [80, "99"]}}, "ad"),
    ({"specs.weight_g": {"$lte": 250}}, "a"),
    ({"specs.brand": "acme"}, "a"),
    ({"n.deep.er": "x"}, "f"),
    ({"specs": {"$exists": True}}, "ab"),
    ({"specs": {"$exists": False}}, "cdef"),
    ({"tags": {"$exists": True}}, "ac"),  # an explicit null exists
    ({"tags": None}, "bcdef"),  # null matches an explicit null or a missing field
    ({"tags": {"$ne": None}}, "a"),
    ({"stock": True}, "ac"),  # true is not 1
    ({"stock": 1}, "d"),  # and 1 is not true
    ({"stock": False}, "b"),
    ({"stock": {"$in": [True, 1]}}, "acd"),
    ({"$or": [{"category": "apparel"}, {"price": {"$gt": 100}}]}, "bcd"),
    ({"$and": [{"category": "footwear"}, {"stock": True}]}, "a"),
    ({"$not": {"category": "footwear"}}, "cdef"),
    ({"$not": {"$or": [{"category": "footwear"}, {"price": {"$lt": 50}}]}}, "de"),
    ({"$and": [{"$or": [{"category": "apparel"}, {"category": "Café"}]}, {"$not": {"price": {"$lt": 10}}}]}, "cd"),
    ({}, "abcdef"),
]

INVALID = [
    ({"price": {"$lte2": 1}}, "price.$lte2: unknown operator"),
    ({"price": {"$lt": [1]}}, "price.$lt: $lt takes a number or a string, got a list"),
    ({"price": {"$gt": True}}, "price.$gt: $gt takes a number or a string, got a boolean"),
    ({"price": {"$lt": None}}, "price.$lt: $lt takes a number or a string, got null"),
    ({"price": {"$eq": {"a": 1}}}, "price.$eq: $eq takes a string, number, boolean or null, got an object"),
    ({"price": {"$in": 3}}, "price.$in: $in takes a list of values, got a number"),
    ({"price": {"$in": [1, [2]]}}, "price.$in[1]: $in values must be strings, numbers, booleans or null"),
    ({"price": {"$exists": "yes"}}, "price.$exists: $exists takes true or false, got a string"),
    ({"price": {}}, "price: an empty object"),
    ({"price": [1, 2]}, "price: a list is not a value to compare with; use {\"$in\": [...]}"),
    ({"specs": {"brand": "acme"}}, "specs: 'brand' is not an operator; to reach a nested field use the dotted path "
                                   "specs.brand"),
    ({"price": {"$and": []}}, "price.$and: unknown operator"),
    ({"$and": {}}, "$and: $and takes a non-empty list of filters, got an object"),
    ({"$or": []}, "$or: $or takes a non-empty list of filters, got a list"),
    ({"$or": [{"a": 1}, 5]}, "$or[1]: expected an object"),
    ({"$not": [1]}, "$not: expected an object"),
    ({"$nor": [{"a": 1}]}, "$nor: unknown operator"),
    ({"$gt": 1}, "$gt: $gt needs a field"),
    ({"a..b": 1}, "a..b: 'a..b' is not a valid field path"),
    ({"": 1}, "a field name must be a non-empty string"),
    ({"a'b": 1}, "may not contain quotes"),
    ({'a"); DROP TABLE documents; --': 1}, "may not contain quotes"),
    ({"price": float("nan")}, "price: expected a string, number, boolean, null or an object of operators"),
    ([{"a": 1}], "where: expected an object"),
    ("{\"a\": ", "where: not valid JSON"),
    ("[1]", "where: expected an object"),
]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    folder = tmp_path_factory.mktemp("filters-small")
    s = load_settings(overrides={"database_url": f"sqlite:///{folder / 'r.db'}", "index_dir": str(folder / "index"),
                                 "progress": False, "model": HASH}, environ={})
    r = Retriever.from_settings(s)
    r.ingest(DOCS)
    yield r
    r.close()


@pytest.mark.parametrize(("where", "expected"), VALID, ids=[json.dumps(w) for w, _ in VALID])
def test_valid_expressions_match_what_they_say(small: Any, where: dict[str, Any], expected: str) -> None:
    assert small.store.count_matching(where) == len(expected)
    hits = small.search("shoes", k=10, where=where)
    assert sorted(h.id for h in hits) == sorted(expected)
    # Keyword and hybrid modes apply the same filter.
    assert {h.id for h in small.search("shoes boots socks jacket bottle crème", k=10, where=where, mode="keyword")} \
        <= set(expected)
    assert sorted(h.id for h in small.search("shoes", k=10, where=where, mode="hybrid")) == sorted(expected)


@pytest.mark.parametrize(("where", "message"), INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_expressions_are_refused_naming_the_part(small: Any, where: Any, message: str) -> None:
    with pytest.raises(FilterError) as info:
        parse(where)
    assert message in str(info.value)
    with pytest.raises(FilterError):
        small.search("shoes", k=3, where=where)


@pytest.mark.parametrize(("items", "expected"), [
    (["category=footwear"], {"category": "footwear"}),
    (["category = footwear", "price<100"], {"$and": [{"category": "footwear"}, {"price": {"$lt": 100}}]}),
    (["price>=80.5"], {"price": {"$gte": 80.5}}),
    (["stock=true"], {"stock": True}),
    (["tags=null"], {"tags": None}),
    (['price="99"'], {"price": "99"}),  # quoted: a string
    (["name!=red shoes"], {"name": {"$ne": "red shoes"}}),
    (["specs.brand==acme"], {"specs.brand": "acme"}),
    (['{"price": {"$lt": 100}}', "category=footwear"], {"$and": [{"price": {"$lt": 100}}, {"category": "footwear"}]}),
])
def test_cli_shorthand(items: list[str], expected: dict[str, Any]) -> None:
    f = from_cli(items)
    assert f is not None and json.loads(f.canonical) == json.loads(json.dumps(expected, sort_keys=True))


@pytest.mark.parametrize("item", ["price<<1", "price", "=3", "price<", '{"a": {"$bad": 1}}'])
def test_cli_shorthand_refuses_malformed(item: str) -> None:
    with pytest.raises(FilterError):
        from_cli([item])


def test_values_are_bound_parameters_never_sql(small: Any) -> None:
    """A value that looks like SQL is compared as a value; the table is unharmed."""
    evil = "x' OR '1'='1"
    assert small.search("shoes", k=10, where={"category": evil}) == []
    assert small.search("shoes", k=10, where={"category": {"$in": [evil, "'; DROP TABLE documents; --"]}}) == []
    assert small.store.count_documents() == len(DOCS)


def test_filters_see_rows_written_by_other_programs(small: Any, tmp_path: Path) -> None:
    """A plain sqlite3 write is filtered at once (and a cached filter result follows it)."""
    where = {"category": "garden"}
    assert small.search("shoes", k=5, where=where) == []
    con = sqlite3.connect(small.store.url.removeprefix("sqlite:///"))
    with con:
        con.execute("INSERT INTO documents (external_id, text, metadata) VALUES ('g', 'garden hose', ?)",
                    (json.dumps({"category": "garden"}),))
    assert [h.id for h in small.search("shoes", k=5, where=where)] == ["g"]
    with con:
        con.execute("UPDATE documents SET metadata = '{\"category\": \"yard\"}' WHERE external_id = 'g'")
    assert small.search("shoes", k=5, where=where) == []
    with con:
        con.execute("DELETE FROM documents WHERE external_id = 'g'")
    con.close()
    assert small.store.matches.refreshes >= 2  # brought up to date from the change log, not re-evaluated


def test_index_field_serves_the_filter(small: Any) -> None:
    name = small.store.index_field("specs.weight_g")
    assert [f["field"] for f in small.store.field_indexes()] == ["specs.weight_g"]
    from sqlalchemy import select

    from retrieval.store.filters import compile_sqlite
    from retrieval.store.models import Document

    f = parse({"specs.weight_g": {"$lte": 250}})
    assert f is not None
    with small.store.read() as conn:
        stmt = select(Document.id).where(compile_sqlite(f))
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert name in plan, plan
    assert sorted(h.id for h in small.search("x", k=5, where={"specs.weight_g": {"$lte": 250}})) == ["a"]
    small.store.index_field("specs.weight_g", drop=True)
    assert small.store.field_indexes() == []


# -- always k, against brute force -----------------------------------------------------

N = 10_000
CATS = ["shoe", "boot", "sock", "hat", "bag"]


def _meta(rng: random.Random, i: int) -> dict[str, Any]:
    m: dict[str, Any] = {"n": i, "cat": rng.choice(CATS), "price": round(rng.uniform(1, 500), 2),
                         "flag": rng.random() < 0.3}
    r = rng.random()
    if r < 0.7:
        m["tag"] = rng.choice(["red", "green", "blue", "mauve"])
    elif r < 0.8:
        m["tag"] = None
    if rng.random() < 0.5:
        m["specs"] = {"w": rng.randint(100, 900)}
    m["mixed"] = rng.choice([5, "5", True, 5.5, None])
    return m


def _value(meta: dict[str, Any], path: str) -> tuple[bool, Any]:
    cur: Any = meta
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False, None
        cur = cur[part]
    return True, cur


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _eq(found: bool, v: Any, x: Any) -> bool:
    if x is None:
        return not found or v is None
    if isinstance(x, bool):
        return found and isinstance(v, bool) and v == x
    if _is_num(x):
        return found and _is_num(v) and v == x
    return found and isinstance(v, str) and v == x


def oracle(where: dict[str, Any], meta: dict[str, Any]) -> bool:
    """An independent reading of the filter language, in Python."""
    for key, spec in where.items():
        if key == "$and":
            ok = all(oracle(w, meta) for w in spec)
        elif key == "$or":
            ok = any(oracle(w, meta) for w in spec)
        elif key == "$not":
            ok = not oracle(spec, meta)
        else:
            found, v = _value(meta, key)
            ops = spec if isinstance(spec, dict) else {"$eq": spec}
            ok = True
            for op, x in ops.items():
                if op == "$eq":
                    ok &= _eq(found, v, x)
                elif op == "$ne":
                    ok &= not _eq(found, v, x)
                elif op == "$in":
                    ok &= any(_eq(found, v, y) for y in x)
                elif op == "$nin":
                    ok &= not any(_eq(found, v, y) for y in x)
                elif op == "$exists":
                    ok &= found == x
                else:
                    same = (_is_num(x) and _is_num(v)) or (isinstance(x, str) and isinstance(v, str))
                    ok &= found and same and {"$gt": v > x if same else False, "$gte": v >= x if same else False,
                                              "$lt": v < x if same else False, "$lte": v <= x if same else False}[op]
        if not ok:
            return False
    return True


leaf = st.one_of(
    st.builds(lambda a, w: {"n": {"$gte": a, "$lt": a + w}}, st.integers(0, N - 1),
              st.sampled_from([1, 2, 5, 10, 100, 1000, 5000, N])),
    st.builds(lambda c: {"cat": c}, st.sampled_from(CATS + ["none"])),
    st.builds(lambda cs: {"cat": {"$in": cs}}, st.lists(st.sampled_from(CATS), max_size=3)),
    st.builds(lambda cs: {"cat": {"$nin": cs}}, st.lists(st.sampled_from(CATS), max_size=3)),
    st.builds(lambda op, x: {"price": {op: x}}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
              st.floats(0, 520, allow_nan=False)),
    st.builds(lambda x: {"tag": x}, st.sampled_from(["red", "mauve", None])),
    st.builds(lambda x: {"tag": {"$ne": x}}, st.sampled_from(["red", None])),
    st.builds(lambda op, x: {"tag": {op: x}}, st.sampled_from(["$gt", "$lte"]), st.sampled_from(["blue", "m"])),
    st.builds(lambda b: {"tag": {"$exists": b}}, st.booleans()),
    st.builds(lambda b: {"flag": b}, st.booleans()),
    st.builds(lambda x: {"specs.w": {"$lte": x}}, st.integers(90, 910)),
    st.builds(lambda x: {"mixed": x}, st.sampled_from([5, "5", True, 5.5, None, 5.0])),
    st.builds(lambda xs: {"mixed": {"$in": xs}}, st.lists(st.sampled_from([5, "5", True, 5.5, None]), max_size=3)),
)
filters = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"$not": x}, inner),
    ),
    max_leaves=4,
)


def _open(folder: Path, **values: Any) -> Any:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    s = load_settings(overrides={"database_url": f"sqlite:///{folder / 'r.db'}", "index_dir": str(folder / "index"),
                                 "progress": False, "model": HASH, **values}, environ={})
    return Retriever.from_settings(s)


class Corpus:
    """A 10,000-document store and the brute-force truth: every document's metadata and
    vector, as the database holds them now."""

    def __init__(self, folder: Path) -> None:
        rng = random.Random(7)
        self.folder = folder
        r = _open(folder, index_type="flat")
        docs = [{"id": f"d{i}", "text": f"item {i} {rng.choice(CATS)} {rng.randint(0, 10**6)}",
                 "metadata": _meta(rng, i)} for i in range(N)]
        # Three segments, tombstones, then a backlog the index has not applied.
        r.ingest(docs[:4000])
        r.ingest(docs[4000:8000])
        r.ingest(docs[8000:])
        r.delete([f"d{i}" for i in range(0, N, 97)])
        r.ingest([{**d, "text": d["text"] + " updated"} for d in docs[10:200:3]])
        r.ingest([{**d, "text": d["text"] + " pending"} for d in docs[5000:5300:7]], sync=False)
        r.delete([f"d{i}" for i in range(1, N, 101)], sync=False)
        with r.store.read() as conn:
            rows = conn.exec_driver_sql("SELECT id, external_id, text, metadata FROM documents ORDER BY id").all()
        self.ids = np.array([row[0] for row in rows], np.int64)
        self.external = [row[1] for row in rows]
        self.meta = [json.loads(row[3]) if row[3] else {} for row in rows]
        self.vectors = r.encoder.encode([row[2] for row in rows])
        self.encoder = r.encoder
        r.close()

    def truth(self, where: dict[str, Any], q: np.ndarray, k: int) -> tuple[np.ndarray, list[str]]:
        mask = np.array([oracle(where, m) for m in self.meta], bool)
        scores = self.vectors[mask] @ q
        order = np.argsort(-scores, kind="stable")[:k]
        names = [e for e, ok in zip(self.external, mask) if ok]
        return scores[order], [names[i] for i in order]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus(tmp_path_factory.mktemp("filters-corpus"))


@pytest.fixture(scope="module")
def flat(corpus: Corpus) -> Any:
    r = _open(corpus.folder, index_type="flat")
    assert len(r.current_index().manifest.segments) >= 2 and r.lag()["pending_changes"] > 0
    yield r
    r.close()


@pytest.fixture(scope="module")
def approximate(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The same database with an index folder of its own: HNSW segments, and filters of
    more than 500 matches per segment searched through the graph."""
    import shutil

    folder = tmp_path_factory.mktemp("filters-hnsw")
    shutil.copy(corpus.folder / "r.db", folder / "r.db")
    r = _open(folder, index_type="hnsw", hnsw_m=16, filter_exact_rows=500, min_recall=0.95)
    r.sync()
    assert {s.kind for s in r.current_index().manifest.segments} == {"hnsw"}, r.current_index().manifest.segments
    yield r
    r.close()


def _query(seed: int, corpus: Corpus) -> np.ndarray:
    # A stored document's vector, nudged: realistic neighbourhoods, few exact ties.
    rng = np.random.default_rng(seed)
    q = corpus.vectors[seed % len(corpus.vectors)] + 0.3 * rng.standard_normal(corpus.vectors.shape[1])
    return (q / np.linalg.norm(q)).astype(np.float32)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=filters, k=st.sampled_from([1, 5, 10, 60]), seed=st.integers(0, 10**6))
def test_filtered_search_equals_brute_force_on_exact_segments(flat: Any, corpus: Corpus, where: dict[str, Any],
                                                              k: int, seed: int) -> None:
    q = _query(seed, corpus)
    want_scores, want_ids = corpus.truth(where, q, k)
    hits = flat.search_vectors(q.reshape(1, -1), k, where=where)[0]
    assert len(hits) == len(want_ids)  # min(k, matching documents)
    got = np.array([h.score for h in hits], np.float32)
    np.testing.assert_allclose(got, want_scores, atol=1e-5)
    if len(hits):  # the same documents, ties at the cut aside
        bar = want_scores[-1] + 1e-5
        assert {h.id for h, s in zip(hits, got) if s > bar} == {i for i, s in zip(want_ids, want_scores) if s > bar}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(where=filters, k=st.sampled_from([1, 10, 60]), seed=st.integers(0, 10**6))
def test_filtered_search_on_hnsw_always_returns_k_matching(approximate: Any, corpus: Corpus, where: dict[str, Any],
                                                           k: int, seed: int) -> None:
    q = _query(seed, corpus)
    _, want_ids = corpus.truth(where, q, k)
    hits = approximate.search_vectors(q.reshape(1, -1), k, where=where)[0]
    assert len(hits) == len(want_ids)
    assert len({h.id for h in hits}) == len(hits)
    by_id = dict(zip(corpus.external, corpus.meta))
    assert all(oracle(where, by_id[h.id]) for h in hits)


def test_filtered_hnsw_recall(approximate: Any, corpus: Corpus) -> None:
    """Through the graph (a selector of the allowed rows, efSearch widened), filtered
    results stay close to exact at every selectivity."""
    recalls: dict[int, list[float]] = {}
    for width in (60, 1200, 3000, N):
        for seed in range(15):
            where = {"n": {"$gte": (seed * 613) % (N - width + 1), "$lt": (seed * 613) % (N - width + 1) + width}}
            q = _query(seed, corpus)
            _, want = corpus.truth(where, q, 10)
            hits = approximate.search_vectors(q.reshape(1, -1), 10, where=where)[0]
            recalls.setdefault(width, []).append(len({h.id for h in hits} & set(want)) / len(want))
    means = {w: float(np.mean(r)) for w, r in recalls.items()}
    assert min(means.values()) >= 0.9, means


def test_a_filter_matching_fewer_than_k(flat: Any, approximate: Any, corpus: Corpus) -> None:
    where = {"n": {"$in": [3, 4, 5000, 9999, 123456]}}
    q = _query(1, corpus)
    _, want = corpus.truth(where, q, 50)
    assert 0 < len(want) < 5
    for r in (flat, approximate):
        assert sorted(h.id for h in r.search_vectors(q.reshape(1, -1), 50, where=where)[0]) == sorted(want)
    assert flat.search_vectors(q.reshape(1, -1), 5, where={"cat": "nothing"})[0] == []
