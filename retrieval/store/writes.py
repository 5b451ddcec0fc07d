"""The statements of a batch upsert, on each database (inside the caller's transaction)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, text, update

from retrieval.errors import StoreError
from retrieval.store import db
from retrieval.store.models import Base, Document
from retrieval.store.records import NewDocument, UpsertCounts, chunks, content_hash

_DOCS = Base.metadata.tables["documents"]


def upsert_sqlite(conn: Connection, docs: Sequence[NewDocument], counts: UpsertCounts) -> None:
    """One batch of :meth:`~retrieval.store.repository.Store.upsert_batches` on SQLite (the write lock is held)."""
    existing: dict[str, tuple[int, str | None, str, Any]] = {}
    for part in chunks([d.external_id for d in docs]):
        for row in conn.execute(
            select(Document.external_id, Document.id, Document.content_hash, Document.text, Document.meta).where(
                Document.external_id.in_(part)
            )
        ):
            existing[row[0]] = (row[1], row[2], row[3], row[4])
    inserts: list[dict[str, Any]] = []
    text_updates: list[dict[str, Any]] = []
    meta_updates: list[dict[str, Any]] = []
    for d in docs:
        h = content_hash(d.text)
        old = existing.get(d.external_id)
        if old is None:
            inserts.append({"external_id": d.external_id, "text": d.text, "metadata": d.metadata, "content_hash": h})
            counts.added += 1
        elif old[2] != d.text:
            text_updates.append({"b_id": old[0], "b_text": d.text, "b_meta": d.metadata, "b_hash": h})
            counts.updated += 1
        elif (old[3] or {}) != d.metadata:
            meta_updates.append({"b_id": old[0], "b_meta": d.metadata})
            counts.updated += 1
        else:
            counts.unchanged += 1
    if inserts:
        conn.execute(insert(_DOCS), inserts)
    if text_updates:
        conn.execute(
            update(_DOCS)
            .where(_DOCS.c.id == bindparam("b_id"))
            .values(
                {
                    _DOCS.c.text: bindparam("b_text"),
                    _DOCS.c.metadata: bindparam("b_meta"),
                    _DOCS.c.content_hash: bindparam("b_hash"),
                    _DOCS.c.updated_at: func.current_timestamp(),
                }
            ),
            text_updates,
        )
    if meta_updates:
        conn.execute(
            update(_DOCS)
            .where(_DOCS.c.id == bindparam("b_id"))
            .values({_DOCS.c.metadata: bindparam("b_meta"), _DOCS.c.updated_at: func.current_timestamp()}),
            meta_updates,
        )


def upsert_postgres(conn: Connection, docs: Sequence[NewDocument], counts: UpsertCounts) -> None:
    """One batch of :meth:`~retrieval.store.repository.Store.upsert_batches` on PostgreSQL: one ``INSERT ... ON
    CONFLICT DO UPDATE`` from a staging table filled by COPY. New ids are inserted,
    changed ones updated, identical ones left alone (the WHERE of DO UPDATE), whatever
    other writers do meanwhile."""
    latest = {d.external_id: d for d in docs}  # one row per id: ON CONFLICT may touch a row once
    for d in latest.values():
        if "\x00" in d.text or "\x00" in d.external_id:
            raise StoreError(f"document {d.external_id!r}: PostgreSQL cannot store a NUL character in a text")
    staging(conn, "retrieval_staging_documents", "external_id text, text text, metadata jsonb, content_hash text",
             ((d.external_id, d.text, _json_or_none(d.metadata), content_hash(d.text)) for d in latest.values()))
    inserted, written = conn.execute(text(_UPSERT_FROM_STAGING)).one()
    counts.added += int(inserted)
    counts.updated += int(written) - int(inserted)
    counts.unchanged += len(docs) - int(written)


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def staging(conn: Connection, table: str, columns: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Fill a temporary table of this connection with ``rows`` by COPY (PostgreSQL's
    fastest way in: one stream, no statement per row). Its rows go at commit or rollback.

    The table is the session's; it is created in the transaction (IF NOT EXISTS each time,
    since a transaction that rolls back takes a table it created with it)."""
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS")
    conn.exec_driver_sql(f"DELETE FROM {table}")  # an earlier batch of the same transaction
    names = ", ".join(c.split()[0] for c in columns.split(", "))
    import psycopg  # only PostgreSQL gets here

    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.DataError as exc:  # the driver's own, not wrapped by SQLAlchemy: COPY is the raw cursor's
        raise StoreError(f"the database refused the data: {db.first_line(exc)}") from exc
    except psycopg.Error as exc:
        raise StoreError(f"database error: {db.first_line(exc)}") from exc


_UPSERT_FROM_STAGING = """
WITH written AS (
    INSERT INTO documents (external_id, text, metadata, content_hash)
    SELECT external_id, text, metadata, content_hash FROM retrieval_staging_documents
    ON CONFLICT (external_id) DO UPDATE
        SET text = excluded.text, metadata = excluded.metadata, content_hash = excluded.content_hash
        WHERE documents.text IS DISTINCT FROM excluded.text
           OR documents.metadata IS DISTINCT FROM excluded.metadata
    RETURNING (xmax = 0) AS inserted
)
SELECT count(*) FILTER (WHERE inserted), count(*) FROM written
"""

VECTORS_FROM_STAGING = """
INSERT INTO embeddings (model_key, content_hash, dim, vector)
SELECT model_key, content_hash, dim, vector FROM retrieval_staging_vectors
ON CONFLICT (model_key, content_hash) DO NOTHING
"""
