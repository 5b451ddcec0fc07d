"""The query sample (revision 0006): recent query vectors per model, a bounded number of
them, for the recall guard to calibrate approximate segments with.

A sample is never worth waiting for: :func:`record` takes the write lock only if it is
free at once (SQLite: no busy timeout for its transaction; PostgreSQL: a short lock and
statement timeout) and otherwise fails with :class:`~retrieval.errors.StoreError`, which
the caller drops. Newest means the highest id.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError

from retrieval.errors import StoreError
from retrieval.store import db
from retrieval.store.models import QuerySample

# PostgreSQL: how long a sample's transaction may wait for a row lock (another process
# trimming the same model) and run at all.
LOCK_TIMEOUT_MS = 50
STATEMENT_TIMEOUT_MS = 2000

# One model's queries to record: (model key, float32 vectors of shape (n, dim), n texts or None).
Group = tuple[str, np.ndarray, Sequence[str | None] | None]


@contextmanager
def _write_now(engine: Engine) -> Iterator[Connection]:
    """A write transaction that does not wait for another writer: "locked" at once instead."""
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                with conn.begin():
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}")
                    yield conn
                return
            # The pooled connection waits busy_timeout_ms for a lock: not this transaction.
            # The pragma runs on the driver connection, outside any transaction (see db.py).
            driver = conn.connection.driver_connection
            assert driver is not None, "a pooled connection always has its driver connection"
            previous = int(driver.execute("PRAGMA busy_timeout").fetchone()[0])
            driver.execute("PRAGMA busy_timeout = 0")
            try:
                with conn.execution_options(sqlite_begin="BEGIN IMMEDIATE").begin():
                    yield conn
            finally:
                driver.execute(f"PRAGMA busy_timeout = {previous}")
    except DBAPIError as exc:
        raise StoreError(f"the query sample was not written: {db.first_line(exc.orig)}") from exc


def record(engine: Engine, groups: Sequence[Group], keep: int) -> int:
    """Insert each group's vectors (in order: the last is the newest) and trim each of
    their models to its newest ``keep`` rows, in one transaction that takes the write lock
    only if it is free. Texts are stored as given (None: NULL). Returns rows inserted.
    The caller refuses a read-only store."""
    rows: list[dict[str, Any]] = []
    for model_key, vectors, texts in groups:
        matrix = np.asarray(vectors, dtype="<f4")
        if matrix.ndim != 2:
            raise ValueError(f"query vectors must be a 2-d array, got shape {matrix.shape}")
        if texts is not None and len(texts) != len(matrix):
            raise ValueError(f"{len(texts)} texts for {len(matrix)} query vectors")
        rows.extend({"model_key": model_key, "vector": row.tobytes(), "text": None if texts is None else texts[i]}
                    for i, row in enumerate(matrix))
    if not rows or keep <= 0:
        return 0
    models = sorted({r["model_key"] for r in rows})
    with _write_now(engine) as conn:
        conn.execute(insert(QuerySample), rows)
        for model_key in models:
            _trim(conn, model_key, keep)
    return len(rows)


def _trim(conn: Connection, model_key: str, keep: int) -> int:
    """Delete the rows of ``model_key`` below its newest ``keep``."""
    if keep <= 0:
        return int(conn.execute(delete(QuerySample).where(QuerySample.model_key == model_key)).rowcount or 0)
    # The id of the newest row past the ones kept (none: nothing to trim), through the index.
    edge = conn.scalar(select(QuerySample.id).where(QuerySample.model_key == model_key)
                       .order_by(QuerySample.id.desc()).offset(keep).limit(1))
    if edge is None:
        return 0
    return int(conn.execute(delete(QuerySample).where(QuerySample.model_key == model_key,
                                                      QuerySample.id <= edge)).rowcount or 0)


def recent(conn: Connection, model_key: str, limit: int, dim: int | None = None) -> np.ndarray:
    """The newest ``limit`` query vectors of ``model_key``, newest first, as float32 of shape
    (n, dim). Rows of another length than ``dim`` floats are skipped (None: the newest
    row's length). None recorded: shape (0, dim), or (0, 0) without ``dim``."""
    if limit <= 0:
        return np.empty((0, dim or 0), np.float32)
    query = select(QuerySample.vector).where(QuerySample.model_key == model_key)
    if dim is not None:
        query = query.where(func.length(QuerySample.vector) == 4 * dim)
    blobs = list(conn.scalars(query.order_by(QuerySample.id.desc()).limit(limit)))
    if dim is None:
        if not blobs:
            return np.empty((0, 0), np.float32)
        dim = len(blobs[0]) // 4
    kept = [bytes(b) for b in blobs if len(b) == 4 * dim]
    if not kept:
        return np.empty((0, dim), np.float32)
    return np.frombuffer(b"".join(kept), dtype="<f4").reshape(len(kept), dim).astype(np.float32)


def count(conn: Connection, model_key: str | None = None) -> int:
    """Query samples recorded (of ``model_key``, or of every model)."""
    query = select(func.count()).select_from(QuerySample)
    if model_key is not None:
        query = query.where(QuerySample.model_key == model_key)
    return int(conn.scalar(query) or 0)


def prune(conn: Connection, keep_model: str | None, keep: int | None = None, *, keep_texts: bool = True) -> int:
    """Delete the samples of every model but ``keep_model`` (None: of every model), trim
    ``keep_model``'s to its newest ``keep`` (None: as they are), and clear their texts
    unless ``keep_texts``: what the settings allow now, applied to what was recorded
    before (``retrieve compact``), in the caller's write transaction. Returns rows deleted."""
    others = delete(QuerySample)
    if keep_model is not None:
        others = others.where(QuerySample.model_key != keep_model)
    removed = int(conn.execute(others).rowcount or 0)
    if keep_model is not None and keep is not None:
        removed += _trim(conn, keep_model, keep)
    if not keep_texts:
        conn.execute(update(QuerySample).where(QuerySample.text.is_not(None)).values(text=None))
    return removed
