"""The store: every database read and write of the service, in domain terms.

Reads run inside one transaction that sees one snapshot (SQLite's; REPEATABLE READ READ
ONLY on PostgreSQL), so the change-log position and the documents they return agree.
A document and its change-log rows are written in one transaction by the triggers.

Writers on SQLite take the write lock up front (BEGIN IMMEDIATE). On PostgreSQL they run
at READ COMMITTED and never check-then-insert: documents and vectors are written with
``INSERT ... ON CONFLICT`` (large batches through ``COPY`` into a staging table first),
so concurrent writers of the same ids neither fail nor duplicate anything, and revision
0003's advisory lock makes change-log order commit order.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, func, not_, select, text, update
from sqlalchemy.dialects import postgresql as postgresql_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DataError, OperationalError

from retrieval.errors import StoreError
from retrieval.filters import field_path
from retrieval.filters import parse as parse_filter
from retrieval.store import db, queries
from retrieval.store.filters import index_expression, index_name, pg_field_expression
from retrieval.store.matches import MatchCache
from retrieval.store.models import Base, Change, Document, Embedding, Passage
from retrieval.store.records import NewDocument, StoredDocument, UpsertCounts, chunks, stored
from retrieval.store.snapshot import Snapshot
from retrieval.store.writes import VECTORS_FROM_STAGING, staging, upsert_postgres, upsert_sqlite

_DOCS = Base.metadata.tables["documents"]
_EMBEDDINGS = Base.metadata.tables["embeddings"]
_PASSAGES = Base.metadata.tables["passages"]
_DOC_COLUMNS = (Document.id, Document.external_id, Document.text, Document.meta, Document.content_hash)


class Store:
    """Repository over one database. Thread-safe: each call uses its own connection."""

    def __init__(self, engine: Engine, url: str, *, readonly: bool = False) -> None:
        self.engine = engine
        self.url = url
        self.matches = MatchCache()
        # A SQLite file this process cannot write (a read-only mount, another user's
        # folder): reads work, writes fail with one line, and derived data (vectors,
        # hashes a search computes for documents the index has not caught up with) is
        # computed and not stored.
        self.readonly = readonly

    @classmethod
    def open(cls, url: str, *, busy_timeout_ms: int = 30_000, migrate: bool = True) -> Store:
        url = db.normalise_url(url)
        readonly = not db.writable(url)
        engine = db.create_store_engine(url, busy_timeout_ms=busy_timeout_ms, readonly="ro" if readonly else None)
        try:
            if readonly:
                try:
                    db.current_revision(engine)
                except OperationalError:
                    # A WAL database whose shared-memory file cannot be made beside it
                    # (nobody has it open, and the folder is read-only): read it as the
                    # immutable file it is for this process.
                    engine.dispose()
                    engine = db.create_store_engine(url, busy_timeout_ms=busy_timeout_ms, readonly="immutable")
            if migrate:
                db.ensure_schema(engine, readonly=readonly)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, url, readonly=readonly)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[Snapshot]:
        """One read transaction: every question asked of the :class:`Snapshot` sees the
        same database state. Inside a :func:`~retrieval.store.db.deadline`, its
        statements stop when it passes."""
        with self.connection() as conn:
            yield Snapshot(conn, self.matches)

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """The read transaction behind :meth:`read`, as a connection: for ``store/`` itself
        (and tests) where SQL is the point."""
        try:
            connection = self.engine.connect()
            if connection.dialect.name == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with connection as conn, conn.begin():
                left = db.remaining()
                if left is not None and conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(left * 1000))}")
                yield conn
        except OperationalError as exc:
            stop = db.interrupted(exc)
            if stop is not None:
                raise stop from None
            raise _store_error(exc, self.url) from exc

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction holding the write lock; commits on success."""
        try:
            with self.engine.connect().execution_options(sqlite_begin="BEGIN IMMEDIATE") as conn, conn.begin():
                yield conn
        except OperationalError as exc:
            stop = db.interrupted(exc)
            if stop is not None:
                raise stop from None
            raise _store_error(exc, self.url) from exc
        except DataError as exc:  # PostgreSQL refuses what SQLite stores (a NUL in a text)
            raise StoreError(f"the database refused the data: {db.first_line(exc.orig)}") from exc

    # -- documents --------------------------------------------------------------------

    def upsert(self, docs: Sequence[NewDocument]) -> UpsertCounts:
        """Insert new documents, update changed ones, leave identical ones alone.

        All in one transaction: either every document is stored or none is.
        """
        return self.upsert_batches([docs])

    def upsert_batches(self, batches: Iterable[Sequence[NewDocument]]) -> UpsertCounts:
        """:meth:`upsert` of every batch, in one transaction: the caller streams documents
        in (a file too large to hold in memory), and either all of them are stored or
        none. Each id may appear once in all the batches."""
        counts = UpsertCounts()
        postgres = self.dialect == "postgresql"
        with self.write() as conn:
            for docs in batches:
                if docs:
                    (upsert_postgres if postgres else upsert_sqlite)(conn, docs, counts)
        return counts

    def delete(self, external_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete documents by external id; returns (deleted count, ids not found)."""
        found: set[str] = set()
        with self.write() as conn:
            for part in chunks(list(external_ids)):
                found.update(conn.scalars(select(Document.external_id).where(Document.external_id.in_(part))))
                conn.execute(delete(Document).where(Document.external_id.in_(part)))
        missing = [e for e in dict.fromkeys(external_ids) if e not in found]
        return len(found), missing

    def get(self, external_id: str) -> StoredDocument | None:
        with self.connection() as conn:
            row = conn.execute(select(*_DOC_COLUMNS).where(Document.external_id == external_id)).first()
        return stored(row) if row else None

    def get_many(self, external_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The stored documents among ``external_ids``, by external id."""
        out: dict[str, StoredDocument] = {}
        with self.connection() as conn:
            for part in chunks(list(dict.fromkeys(external_ids))):
                for row in conn.execute(select(*_DOC_COLUMNS).where(Document.external_id.in_(part))):
                    out[row[1]] = stored(row)
        return out

    # -- metadata filters -------------------------------------------------------------

    def count_matching(self, where: Any) -> int:
        f = parse_filter(where)
        with self.read() as snap:
            return snap.count_documents() if f is None else len(snap.matching_ids(f))

    def index_field(self, field: str, *, drop: bool = False) -> str:
        """Create (or drop) an expression index on a metadata field that filters use often.

        On PostgreSQL, equality and ``$in`` are served by the GIN index on all of the
        metadata already; this btree index on ``metadata -> field`` serves ranges."""
        path = field_path(field)
        name = index_name(path)
        with self.write() as conn:
            if drop:
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
                return name
            if conn.dialect.name == "postgresql":
                expr = str(pg_field_expression(path, qualified=False))
            else:
                expr = str(index_expression(path).compile(conn, compile_kwargs={"literal_binds": True}))
            # Without parameters, so that the driver reads no placeholder in the field's
            # name (psycopg would take the % of a field "x%" for one).
            conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON documents (({expr}))",
                                 execution_options={"no_parameters": True})
        return name

    def field_indexes(self) -> list[dict[str, str]]:
        """Expression indexes on metadata fields (made by :meth:`index_field`)."""
        with self.connection() as conn:
            if conn.dialect.name == "postgresql":
                rows = conn.execute(
                    text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'documents' "
                         "AND schemaname = current_schema() AND starts_with(indexname, 'ix_meta_') ORDER BY indexname")
                ).all()
                pattern = r"'([^']*)'::text"
            else:
                rows = conn.exec_driver_sql(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_meta_%' ORDER BY name"
                ).all()
                pattern = r'"([^"]*)"'
        out = []
        for name, sql in rows:
            parts = re.findall(pattern, sql or "")
            out.append({"name": name, "field": ".".join(parts) if parts else "?", "sql": sql})
        return out

    # -- change log -------------------------------------------------------------------

    def never_reuse(self, doc_id: int, seq: int) -> None:
        """Make new documents and changes get ids above ``doc_id`` and ``seq``: after a
        database moved backwards (a restore), the ids an index held for documents that
        are gone are never handed to new ones. SQLite's AUTOINCREMENT keeps this within
        one file, but a restored file brings its old counter back."""
        with self.write() as conn:
            if conn.dialect.name == "postgresql":
                for table, column, value in (("documents", "id", doc_id), ("changes", "seq", seq)):
                    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                                      f"GREATEST(:v, nextval(pg_get_serial_sequence('{table}', '{column}'))))"),
                                 {"v": int(value)})
                return
            for table, value in (("documents", doc_id), ("changes", seq)):
                done = conn.execute(text("UPDATE sqlite_sequence SET seq = MAX(seq, :v) WHERE name = :t"),
                                    {"v": int(value), "t": table}).rowcount
                if not done and value > 0:
                    conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES (:t, :v)"),
                                 {"v": int(value), "t": table})

    # -- embeddings -------------------------------------------------------------------

    def add_embeddings(self, model_key: str, dim: int, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store vectors for content hashes; hashes already stored for the model are kept
        (in a read-only store, nothing: they are derived data, computed again when needed)."""
        if not items or self.readonly:
            return
        if self.dialect == "postgresql":
            unique = {h: v for h, v in items}
            with self.write() as conn:
                staging(conn, "retrieval_staging_vectors", "model_key text, content_hash text, dim integer, vector bytea",
                         ((model_key, h, dim, np.asarray(v, dtype="<f4").tobytes()) for h, v in unique.items()))
                conn.execute(text(VECTORS_FROM_STAGING))
            return
        with self.write() as conn:
            have: set[str] = set()
            for part in chunks([h for h, _ in items]):
                have.update(
                    conn.scalars(
                        select(Embedding.content_hash).where(
                            Embedding.model_key == model_key, Embedding.content_hash.in_(part)
                        )
                    )
                )
            rows = [
                {"model_key": model_key, "content_hash": h, "dim": dim, "vector": np.asarray(v, dtype="<f4").tobytes()}
                for h, v in items
                if h not in have
            ]
            if rows:
                # Insert-or-ignore: a vector another writer stored meanwhile is kept.
                conn.execute(sqlite_dialect.insert(_EMBEDDINGS).on_conflict_do_nothing(), rows)

    def set_hashes(self, fixes: Sequence[tuple[int, str]]) -> None:
        """Record content hashes computed by sync for rows written by other programs."""
        if not fixes or self.readonly:
            return
        with self.write() as conn:
            # Only the hash column is touched, so the change-log trigger does not fire.
            conn.execute(
                update(_DOCS).where(_DOCS.c.id == bindparam("b_id")).values({_DOCS.c.content_hash: bindparam("b_hash")}),
                [{"b_id": i, "b_hash": h} for i, h in fixes],
            )

    # -- passages ---------------------------------------------------------------------

    def save_passages(self, splitter: str, documents: Sequence[tuple[int, str, Sequence[tuple[int, int, str]]]]) -> None:
        """Record how ``splitter`` split documents: (id, the text's content hash, [(start,
        end, passage hash) per passage]). A document's earlier rows for this splitter are
        replaced; a document of one passage keeps none."""
        if not documents or self.readonly:
            return
        rows = [{"doc_id": doc_id, "splitter": splitter, "ordinal": n, "start_char": start, "end_char": end,
                 "content_hash": h, "source_hash": source}
                for doc_id, source, parts in documents if len(parts) > 1
                for n, (start, end, h) in enumerate(parts)]
        insert = (postgresql_dialect if self.dialect == "postgresql" else sqlite_dialect).insert(_PASSAGES)
        # Upserts: two replicas recording the same documents at once neither fail nor
        # mix (a reader takes only rows of the document's current content hash).
        upsert = insert.on_conflict_do_update(
            index_elements=["doc_id", "splitter", "ordinal"],
            set_={c: insert.excluded[c] for c in ("start_char", "end_char", "content_hash", "source_hash")})
        with self.write() as conn:
            for part in chunks([doc_id for doc_id, _, _ in documents]):
                conn.execute(delete(Passage).where(Passage.splitter == splitter, Passage.doc_id.in_(part)))
            for part in chunks(rows, 2_000):
                conn.execute(upsert, part)

    # -- query sample -----------------------------------------------------------------

    def record_queries(self, model_key: str, vectors: np.ndarray, texts: Sequence[str | None] | None,
                       keep: int) -> int:
        """Add query vectors of ``model_key`` (float32, one row per query, the last the
        newest; ``texts`` beside them or None) to the query sample and trim the model's to
        its newest ``keep``, in one transaction. Never waits for another writer: a locked
        database is a :class:`~retrieval.errors.StoreError` at once. A read-only store, or
        ``keep`` 0, writes nothing. Returns rows inserted."""
        return self.record_query_groups([(model_key, vectors, texts)], keep)

    def record_query_groups(self, groups: Sequence[queries.Group], keep: int) -> int:
        """:meth:`record_queries` of several models' (model key, vectors, texts), in one
        transaction."""
        return 0 if self.readonly else queries.record(self.engine, groups, keep)

    def recent_queries(self, model_key: str, limit: int, dim: int | None = None) -> np.ndarray:
        """The newest ``limit`` query vectors of ``model_key``, newest first: float32 of
        shape (n, dim), rows of another length skipped (``dim`` None: the newest row's).
        None recorded: shape (0, dim), or (0, 0) without ``dim``."""
        with self.connection() as conn:
            return queries.recent(conn, model_key, limit, dim)

    def count_queries(self, model_key: str | None = None) -> int:
        """Query samples recorded (of ``model_key``, or of every model)."""
        with self.connection() as conn:
            return queries.count(conn, model_key)

    def prune_queries(self, keep_model: str | None, keep: int | None = None, *, keep_texts: bool = True) -> int:
        """Delete the query samples of every model but ``keep_model``, trim its own to the
        newest ``keep`` and clear their texts unless ``keep_texts``. Returns rows deleted."""
        if self.readonly:
            return 0
        with self.write() as conn:
            return queries.prune(conn, keep_model, keep, keep_texts=keep_texts)

    # -- status -----------------------------------------------------------------------

    def stats(self, model_key: str | None) -> dict[str, int]:
        with self.connection() as conn:
            docs = int(conn.scalar(select(func.count()).select_from(Document)) or 0)
            embedded = 0
            if model_key is not None:  # documents with every vector they need (their passages')
                embedded = docs - Snapshot(conn, self.matches).count_docs_without_vectors(model_key)
            vectors = int(conn.scalar(select(func.count()).select_from(Embedding)) or 0)
            max_seq = Snapshot(conn, self.matches).max_seq()
        return {"documents": docs, "embedded": embedded, "stored_vectors": vectors, "max_seq": max_seq}

    def database_bytes(self) -> int:
        """The database's size on disk: the SQLite file with its WAL, or PostgreSQL's
        ``pg_database_size``."""
        if self.dialect != "postgresql":
            return db.file_size(self.url)
        with self.connection() as conn:
            return int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)

    def ping(self) -> None:
        with self.connection() as conn:
            conn.execute(text("SELECT 1"))

    def count_documents(self) -> int:
        with self.read() as snap:
            return snap.count_documents()

    def backlog(self, after: int) -> tuple[int, float | None]:
        """(change-log entries after ``after``, when the oldest of them was made), in one snapshot."""
        with self.read() as snap:
            return snap.count_changes(after), snap.oldest_change_after(after)

    # -- space ------------------------------------------------------------------------

    def reclaimable(self, keep_model: str | None, applied_floor: int) -> dict[str, int]:
        """What compaction would give back: vectors no document uses (and, with
        ``keep_model``, every other model's), change-log rows below ``applied_floor``,
        and the database file's free pages."""
        with self.connection() as conn:
            unused = conn.execute(
                select(func.count(), func.coalesce(func.sum(func.length(Embedding.vector)), 0)).where(
                    _unused_embeddings(keep_model)
                )
            ).one()
            changes = int(conn.scalar(select(func.count()).select_from(Change).where(Change.seq < applied_floor)) or 0)
            free_bytes = 0
            if conn.dialect.name == "sqlite":
                free_bytes = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0) * int(
                    conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
                )
        return {
            "unused_embeddings": int(unused[0]),
            "unused_embedding_bytes": int(unused[1]),
            "applied_changes": changes,
            "free_database_bytes": free_bytes,
        }

    def collect_garbage(self, model_key: str, applied_floor: int, *, other_models: bool = False) -> tuple[int, int]:
        """Delete vectors of ``model_key`` no document uses (and every other model's with
        ``other_models``) and change-log rows below ``applied_floor``. Returns (vectors,
        change-log rows) deleted."""
        with self.write() as conn:
            if other_models:
                cond = _unused_embeddings(model_key)
            else:
                cond = and_(Embedding.model_key == model_key, _unused_embeddings(None))
            conn.execute(delete(Passage).where(_stale_passages()))  # before the vectors they name
            removed = conn.execute(delete(Embedding).where(cond)).rowcount
            pruned = conn.execute(delete(Change).where(Change.seq < applied_floor)).rowcount if applied_floor > 0 else 0
        return int(removed or 0), int(pruned or 0)

    def vacuum(self) -> None:
        """Give the database file's free pages back to the file system (SQLite)."""
        if self.engine.dialect.name != "sqlite":
            return
        # VACUUM cannot run inside a transaction, and SQLAlchemy begins one on first use:
        # run it on the driver connection, which is in autocommit mode (see store/db.py).
        raw = self.engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None, "a pooled connection always has its driver connection"
            driver.execute("VACUUM")
            driver.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()


def _stale_passages() -> Any:
    """Passage rows of documents deleted or changed since they were split."""
    return not_(exists().where(Document.id == Passage.doc_id, Document.content_hash == Passage.source_hash))


def _unused_embeddings(model_keep: str | None) -> Any:
    """Embeddings no document uses: hashes of no current text nor recorded passage, or
    another model's vectors."""
    used = exists().where(Document.content_hash == Embedding.content_hash)
    passage = exists().where(Passage.content_hash == Embedding.content_hash)
    condition = not_(used) & not_(passage)
    if model_keep is not None:
        condition = condition | (Embedding.model_key != model_keep)
    return condition


def _store_error(exc: OperationalError, url: str) -> StoreError:
    msg = db.first_line(exc.orig)
    if "readonly database" in msg or "read-only" in msg:
        return StoreError(f"the database {db.describe_url(url)} is read-only for this user ({msg}): searches, get, "
                          "status and verify work; writing needs a user who can write it and its folder")
    if "locked" in msg or "busy" in msg:
        return StoreError(
            f"the database is locked by another writer for longer than the busy timeout ({msg}); "
            "try again, or raise busy_timeout_ms"
        )
    if exc.connection_invalidated or "connect" in msg or "server closed" in msg or "terminat" in msg:
        return StoreError(f"lost the database ({db.describe_url(url)}): {msg}")
    return StoreError(f"database error: {msg}")
