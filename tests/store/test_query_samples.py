"""The query sample in the database (revision 0006): recent query vectors per model,
bounded, written without waiting for another writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import inspect, text

from retrieval.errors import StoreError
from retrieval.store import db
from retrieval.store.repository import Store
from tests.fixtures.databases import execute_sql

MODEL = "hash-384"


def _vectors(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


@pytest.mark.both_databases
def test_upgrading_from_0005_adds_the_table_and_keeps_the_data(database_url: str, db_backend: str) -> None:
    engine = db.create_store_engine(database_url)
    try:
        db.upgrade(engine, "0005")
        execute_sql(database_url, "INSERT INTO documents (external_id, text) VALUES ('a', 'kept through 0006')")
        assert "query_samples" not in inspect(engine).get_table_names()
        db.upgrade(engine)
        assert db.current_revision(engine) == db.HEAD_REVISION == "0006"
        assert "query_samples" in inspect(engine).get_table_names()
        indexes = {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes("query_samples")}
        assert indexes["ix_query_samples_model_id"] == ["model_key", "id"]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT external_id, text FROM documents")).all() == [("a", "kept through 0006")]
            conn.rollback()
        db.downgrade(engine, "0005")
        assert "query_samples" not in inspect(engine).get_table_names()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM documents")).scalar() == 1
            conn.rollback()
    finally:
        engine.dispose()


@pytest.mark.both_databases
def test_record_and_read_back_newest_first(database_url: str, db_backend: str) -> None:
    store = Store.open(database_url)
    try:
        first, second = _vectors(3, seed=1), _vectors(2, seed=2)
        assert store.record_queries(MODEL, first, ["a", "b", "c"], keep=100) == 3
        assert store.record_queries(MODEL, second, None, keep=100) == 2
        assert store.record_queries("other-model", _vectors(4, dim=5), None, keep=100) == 4
        got = store.recent_queries(MODEL, 10)
        assert got.dtype == np.float32 and got.shape == (5, 8)
        np.testing.assert_array_equal(got, np.concatenate([first, second])[::-1])  # bit for bit, newest first
        np.testing.assert_array_equal(store.recent_queries(MODEL, 2, dim=8), second[::-1])
        assert store.recent_queries("other-model", 10).shape == (4, 5)
        assert store.count_queries(MODEL) == 5 and store.count_queries() == 9
        # None recorded: an empty matrix of the dimension asked for, or (0, 0).
        assert store.recent_queries("nobody", 10).shape == (0, 0)
        assert store.recent_queries("nobody", 10, dim=8).shape == (0, 8)
        assert store.recent_queries(MODEL, 0, dim=8).shape == (0, 8)
        with store.connection() as conn:
            texts = [r[0] for r in conn.execute(text(
                "SELECT text FROM query_samples WHERE model_key = :m ORDER BY id"), {"m": MODEL})]
        assert texts == ["a", "b", "c", None, None]
    finally:
        store.close()


@pytest.mark.both_databases
def test_rows_of_another_length_are_skipped(database_url: str, db_backend: str) -> None:
    store = Store.open(database_url)
    try:
        good = _vectors(2)
        store.record_queries(MODEL, good[:1], None, keep=100)
        store.record_queries(MODEL, _vectors(1, dim=3), None, keep=100)  # another model's size, say
        store.record_queries(MODEL, good[1:], None, keep=100)
        np.testing.assert_array_equal(store.recent_queries(MODEL, 10, dim=8), good[::-1])
        # Without a dimension, the newest row's is taken.
        np.testing.assert_array_equal(store.recent_queries(MODEL, 10), good[::-1])
        assert store.recent_queries(MODEL, 10, dim=3).shape == (1, 3)
    finally:
        store.close()


@pytest.mark.both_databases
def test_the_trim_keeps_exactly_the_newest(database_url: str, db_backend: str) -> None:
    store = Store.open(database_url)
    try:
        all_rows = _vectors(25, seed=3)
        for start in range(0, 25, 4):  # batches of 4: the trim runs after each
            store.record_queries(MODEL, all_rows[start:start + 4], None, keep=7)
            assert store.count_queries(MODEL) == min(7, start + len(all_rows[start:start + 4]))
        store.record_queries("other-model", _vectors(3), None, keep=7)
        np.testing.assert_array_equal(store.recent_queries(MODEL, 100), all_rows[-7:][::-1])
        # One batch larger than keep: its newest rows stay.
        store.record_queries(MODEL, all_rows[:10], None, keep=4)
        np.testing.assert_array_equal(store.recent_queries(MODEL, 100), all_rows[6:10][::-1])
        assert store.count_queries("other-model") == 3  # a model's trim leaves the others alone
        # keep 0 writes nothing.
        assert store.record_queries(MODEL, all_rows, None, keep=0) == 0
        assert store.count_queries(MODEL) == 4
    finally:
        store.close()


@pytest.mark.both_databases
def test_prune_applies_the_settings_of_now(database_url: str, db_backend: str) -> None:
    store = Store.open(database_url)
    try:
        store.record_queries(MODEL, _vectors(6), [f"q{i}" for i in range(6)], keep=100)
        store.record_queries("old-model", _vectors(3), ["x", "y", "z"], keep=100)
        assert store.prune_queries(MODEL) == 3  # other models' samples
        assert store.count_queries() == 6
        assert store.prune_queries(MODEL, 4, keep_texts=False) == 2
        with store.connection() as conn:
            assert conn.execute(text("SELECT count(*) FROM query_samples WHERE text IS NOT NULL")).scalar() == 0
        assert store.prune_queries(MODEL, 0) == 4
        assert store.count_queries() == 0
    finally:
        store.close()


def test_recording_refuses_at_once_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    """A query sample never waits: with the write lock held elsewhere, the write fails at
    once (the busy timeout, 10 minutes here, would outlast the test's own timeout)."""
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    store = Store.open(url, busy_timeout_ms=600_000)
    try:
        with db.hold_write_lock(url), pytest.raises(StoreError, match="not written.*locked"):
            store.record_queries(MODEL, _vectors(2), None, keep=10)
        # The connection's busy timeout is back for everything else.
        with store.connection() as conn:
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 600_000
        assert store.record_queries(MODEL, _vectors(2), None, keep=10) == 2
    finally:
        store.close()
