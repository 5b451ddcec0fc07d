"""Database schema (SQLAlchemy 2 typed models).

The schema is created and upgraded only by the Alembic revisions in ``retrieval/migrations/``;
these models describe it for queries and for ``alembic check``.

* ``documents.id`` is also the document's FAISS id.
* ``embeddings`` are keyed by (model key, content hash), not by document: identical
  texts share one vector, and a text is never embedded twice with the same model, even
  when a document changes back to an earlier text.
* ``changes`` is filled by database triggers, so writes by any program are seen.
* On PostgreSQL, ``documents`` also has a generated ``text_search`` tsvector column
  (revision 0003) that the models leave out: only keyword search reads it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only gives an auto-incrementing key to INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# jsonb on PostgreSQL (revision 0003): filters compile to its operators and a GIN index.
Json = JSON().with_variant(postgresql.JSONB(), "postgresql")
# timestamptz on PostgreSQL (revision 0003); SQLite stores UTC text.
Stamp = DateTime().with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"
    # AUTOINCREMENT: an id is never reused after a delete, so a FAISS id always means one document.
    __table_args__ = (
        UniqueConstraint("external_id", name="uq_documents_external_id"),
        Index("ix_documents_content_hash", "content_hash"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(512), nullable=False)
    text: Mapped[str] = mapped_column(Text, nullable=False)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", Json, nullable=True)
    # sha256 of the UTF-8 text; NULL or stale when another program wrote the row, and
    # then recomputed by sync.
    content_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())
    updated_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (UniqueConstraint("model_key", "content_hash", name="uq_embeddings_model_hash"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(256), nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    dim: Mapped[int] = mapped_column(Integer, nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32, little-endian
    created_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())


class Change(Base):
    __tablename__ = "changes"
    __table_args__ = (
        Index("ix_changes_doc_id", "doc_id"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True)
    doc_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    op: Mapped[str] = mapped_column(String(8), nullable=False)  # insert | update | delete
    changed_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())
    # 64 random bits per change (revision 0004; the triggers fill it on SQLite, a column
    # default on PostgreSQL): an index records the token at its position, and a database
    # holding another change there (a restore, another store's copy) has another history.
    token: Mapped[str | None] = mapped_column(String(16), nullable=True)


class Passage(Base):
    """Where each passage of a document longer than the model's window lies (revision
    0005), as the sync split it with ``splitter`` (a key of the tokenizer and lengths):
    hits show their best passage from here, and the vectors of passages (keyed by
    ``content_hash``, the passage text's hash) count as used. A document that is one
    passage has no rows. Rows whose ``source_hash`` is not the document's current
    content hash are stale (the document changed since) and are collected."""

    __tablename__ = "passages"
    __table_args__ = (Index("ix_passages_content_hash", "content_hash"),)

    doc_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    splitter: Mapped[str] = mapped_column(String(256), primary_key=True)
    ordinal: Mapped[int] = mapped_column(Integer, primary_key=True)
    start_char: Mapped[int] = mapped_column(Integer, nullable=False)
    end_char: Mapped[int] = mapped_column(Integer, nullable=False)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    source_hash: Mapped[str] = mapped_column(String(64), nullable=False)


class StoreInfo(Base):
    """Facts about the database itself (revision 0004): ``store_id``, a random identity made
    with the schema, which every index manifest records."""

    __tablename__ = "store_info"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text, nullable=False)


class WorkerState(Base):
    """One row per worker following the database: which replica (``name``), where it
    runs, and its progress, so that ``retrieve status`` sees every worker from anywhere."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(512), primary_key=True)
    host: Mapped[str] = mapped_column(String(256), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    index_dir: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[dict[str, Any]] = mapped_column(Json, nullable=False)
    started_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())
    heartbeat_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())


class QuerySample(Base):
    """A recent query vector of a model (revision 0006): the recall guard calibrates
    approximate segments with them. ``search.query_sample`` of the newest per model are
    kept (the highest ids); ``text`` only with ``search.log_queries``."""

    __tablename__ = "query_samples"
    __table_args__ = (
        Index("ix_query_samples_model_id", "model_key", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(256), nullable=False)
    vector: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # float32, little-endian
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Stamp, nullable=False, server_default=func.current_timestamp())
