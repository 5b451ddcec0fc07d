"""Searches record their query vectors (the query sample the recall guard calibrates
with) without slowing, failing or writing where they must not."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy import event, text

from retrieval.config import SearchSettings
from retrieval.store import db
from retrieval.sync.calibration import MIN_QUERIES, QueryRecorder, calibration_queries

DOCS = [{"id": f"d{i}", "text": f"document {i} about topic {i % 7}"} for i in range(40)]


def _texts(store: Any) -> list[str | None]:
    with store.connection() as conn:
        return [r[0] for r in conn.execute(text("SELECT text FROM query_samples ORDER BY id"))]


@pytest.mark.both_databases
def test_searches_by_text_are_recorded_and_searches_by_example_are_not(make_retriever: Callable[..., Any],
                                                                       db_backend: str) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    key = r.encoder.model_key
    r.search("first query")
    r.search("second query", mode="hybrid")
    r.search_many(["third query", "fourth query"])
    r.search("keyword only", mode="keyword")  # encodes nothing
    r.search("first query")  # again, in the same batch: kept once, as the newest
    r.similar("d3")
    r.search(None, like=["d4"])
    r.search("a plus query", plus=["more"])
    r.search_vectors(r.encoder.encode_queries(["a vector"]))
    assert r.store.count_queries() == 0  # nothing written yet: the batch is small and young
    r.close()

    again = make_retriever()
    got = again.store.recent_queries(key, 100)
    expected = again.encoder.encode_queries(["first query", "fourth query", "third query", "second query"])
    np.testing.assert_array_equal(got, expected)
    assert _texts(again.store) == [None] * 4  # search.log_queries is off by default


@pytest.mark.both_databases
def test_log_queries_keeps_the_texts(make_retriever: Callable[..., Any], db_backend: str) -> None:
    r = make_retriever(log_queries=True)
    r.ingest(DOCS)
    r.search("shoes for running")
    r.search_many(["a bag", "linen pants"])
    r.close()
    assert _texts(make_retriever().store) == ["shoes for running", "a bag", "linen pants"]


def test_query_sample_zero_records_nothing(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(query_sample=0)
    r.ingest(DOCS)
    for i in range(40):
        r.search(f"query {i}")
    assert r.queries.pending() == 0
    r.close()
    assert make_retriever().store.count_queries() == 0


def test_a_full_buffer_is_written_during_searches_and_the_sample_stays_bounded(
        make_retriever: Callable[..., Any]) -> None:
    r = make_retriever(query_sample=40)
    r.ingest(DOCS)
    for i in range(QueryRecorder.flush_queries):
        r.search(f"query {i}")
    assert r.store.count_queries() == QueryRecorder.flush_queries and r.queries.pending() == 0
    for i in range(QueryRecorder.flush_queries, 100):
        r.search(f"query {i}")
    r.close()
    again = make_retriever()
    np.testing.assert_array_equal(again.store.recent_queries(again.encoder.model_key, 1000),
                                  again.encoder.encode_queries([f"query {i}" for i in range(99, 59, -1)]))


def test_a_buffer_is_written_once_its_oldest_query_is_a_minute_old(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever()
    now = [1000.0]
    recorder = QueryRecorder(r.store, SearchSettings(), clock=lambda: now[0])
    vectors = r.encoder.encode_queries(["one", "two"])
    recorder.add("m", vectors[:1], ["one"])
    now[0] += QueryRecorder.flush_seconds - 1
    assert recorder.pending() == 1 and r.store.count_queries() == 0
    now[0] += 1
    recorder.add("m", vectors[1:], ["two"])
    assert recorder.pending() == 0 and r.store.count_queries() == 2


def test_searches_on_many_threads_record_every_query(make_retriever: Callable[..., Any]) -> None:
    """The HTTP service searches on a thread pool: every query is recorded once, whichever
    thread writes the batch."""
    r = make_retriever()
    r.ingest(DOCS)
    errors: list[BaseException] = []

    def searches(t: int) -> None:
        try:
            for i in range(25):
                r.search(f"query{t * 100 + i}")  # hash-384 ignores word order
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=searches, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    r.close()
    assert make_retriever().store.count_queries() == 6 * 25


def test_a_read_only_store_searches_and_writes_nothing(make_retriever: Callable[..., Any],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    writer = make_retriever()
    writer.ingest(DOCS)
    writer.close()
    # The store as a user who cannot write its file sees it (opened mode=ro).
    monkeypatch.setattr(db, "writable", lambda url: False)
    r = make_retriever()
    assert r.store.readonly
    statements: list[str] = []
    event.listen(r.store.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for i in range(40):
        assert r.search(f"query {i}", k=3)
    r.close()
    assert not [s for s in statements if "query_samples" in s or "IMMEDIATE" in s]
    monkeypatch.undo()
    assert make_retriever().store.count_queries() == 0


def test_a_locked_database_neither_fails_nor_holds_up_a_search(make_retriever: Callable[..., Any],
                                                               database_url: str) -> None:
    """Another writer holds the lock throughout: every search answers and the batches are
    dropped. The busy timeout is 10 minutes, longer than the test may run (pytest-timeout):
    a write that waited for it would fail the test instead of returning."""
    r = make_retriever(busy_timeout_ms=600_000)
    r.ingest(DOCS)
    with db.hold_write_lock(database_url):
        for i in range(2 * QueryRecorder.flush_queries):
            assert r.search(f"query {i}", k=3)
        r.close()
    again = make_retriever()
    assert again.store.count_queries() == 0
    again.search("after the lock")
    again.close()
    assert make_retriever().store.count_queries() == 1


@pytest.mark.both_databases
def test_calibration_queries_come_from_the_sample_once_there_are_enough(make_retriever: Callable[..., Any],
                                                                        db_backend: str) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    key, dim = r.encoder.model_key, r.encoder.dim
    for i in range(MIN_QUERIES - 1):
        r.search(f"query {i}")
    vectors, source = calibration_queries(r.store, key, dim, pending=r.queries)
    assert (vectors.shape, source) == ((0, dim), "")
    r.search(f"query {MIN_QUERIES - 1}")
    assert calibration_queries(r.store, key, dim)[1] == ""  # not written yet: still in the buffer
    vectors, source = calibration_queries(r.store, key, dim, pending=r.queries)
    assert source == f"queries:{MIN_QUERIES}" and vectors.shape == (MIN_QUERIES, dim)
    np.testing.assert_array_equal(vectors[0], r.encoder.encode_queries([f"query {MIN_QUERIES - 1}"])[0])
    vectors, source = calibration_queries(r.store, key, dim, limit=10)
    assert source == "queries:10" and len(vectors) == 10
    vectors, source = calibration_queries(r.store, "another-model", dim)
    assert vectors.shape == (0, dim) and source == ""


def test_a_sync_writes_the_buffer_first(make_retriever: Callable[..., Any]) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    r.search("before the sync")
    assert r.store.count_queries() == 0
    r.ingest([{"id": "new", "text": "a new document"}], wait=True)  # syncs before returning
    assert r.store.count_queries() == 1


def test_compact_applies_the_query_settings_of_now(make_retriever: Callable[..., Any]) -> None:
    from retrieval.sync.maintenance import compact

    r = make_retriever(log_queries=True)
    r.ingest(DOCS)
    for i in range(10):
        r.search(f"query {i}")
    r.close()
    make_retriever().store.record_queries("old-model", np.ones((2, 3), np.float32), None, keep=10)
    strict = make_retriever(query_sample=4, log_queries=False)
    assert compact(strict)["query_samples_removed"] == 2 + 6
    assert _texts(strict.store) == [None] * 4
