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

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, bindparam, delete, exists, func, insert, not_, select, text, update
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DataError, OperationalError

from retrieval.errors import StoreError
from retrieval.filters import Filter, field_path
from retrieval.filters import parse as parse_filter
from retrieval.store import db
from retrieval.store.filters import compile_filter, index_expression, index_name, pg_field_expression
from retrieval.store.models import Base, Change, Document, Embedding, StoreInfo

CHUNK = 900  # bound parameters per IN (...): well under every SQLite build's limit


def content_hash(text_: str) -> str:
    """The content hash of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()


FIRST_PAGE = 64  # documents read before their sizes are known, when pages are bounded by bytes


def page_size(mean_chars: float, most: int, max_bytes: int) -> int:
    """Documents per page that hold about ``max_bytes`` of text at ``mean_chars`` each."""
    return max(8, min(most, int(max_bytes / max(1.0, mean_chars))))


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class StoredDocument:
    id: int
    external_id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str | None


@dataclass(frozen=True)
class NewDocument:
    external_id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class UpsertCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


_DOCS = Base.metadata.tables["documents"]
_EMBEDDINGS = Base.metadata.tables["embeddings"]
_DOC_COLUMNS = (Document.id, Document.external_id, Document.text, Document.meta, Document.content_hash)


# Statements on the search path are built once: constructing a select() costs more than
# SQLite takes to run it (compiled forms are cached by SQLAlchemy either way).
_MAX_SEQ = select(func.coalesce(func.max(Change.seq), 0))
_DOCS_BY_IDS = select(*_DOC_COLUMNS).where(Document.id.in_(bindparam("ids", expanding=True)))
_CHANGED_IDS = (
    select(Change.doc_id)
    .where(Change.seq > bindparam("after"), Change.seq <= bindparam("upto"))
    .group_by(Change.doc_id)
)


_MIN_SEQ = select(func.min(Change.seq))
_TOKEN_AT = select(Change.token).where(Change.seq == bindparam("seq"))
_STORE_ID = select(StoreInfo.value).where(StoreInfo.key == "store_id")
_NO_VECTOR = ~exists().where(Embedding.model_key == bindparam("key"), Embedding.content_hash == Document.content_hash)
_WITHOUT_VECTORS_ALL = select(Document.id).where(_NO_VECTOR)
_WITHOUT_VECTORS = (
    select(Document.id, Document.text, Document.content_hash)
    .where(Document.id > bindparam("after"), _NO_VECTOR)
    .order_by(Document.id)
    .limit(bindparam("limit"))
)


class MatchCache:
    """Which documents a filter matches, by filter, as of a change-log position.

    A filter's matches change only when documents do, and every change is in the change
    log: an entry made at position ``seq`` is brought to a later position by evaluating
    the filter on the documents changed in between only, so a repeated filter costs what
    changed, not O(store). An entry also keeps the token of the change at its position
    (revision 0004): a database restored from a backup may reach the same position
    through other changes, and such an entry is not used. Bounded by bytes; least
    recently used entries go first.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_refresh: int = 20_000) -> None:
        self.max_bytes = max_bytes
        self.max_refresh = max_refresh  # more changes than this: evaluate from scratch
        self._entries: OrderedDict[str, tuple[int, str | None, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.refreshes = self.misses = 0

    def get(self, key: str) -> tuple[int, str | None, np.ndarray] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, seq: int, token: str | None, ids: np.ndarray) -> None:
        if ids.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2].nbytes
                if old[0] > seq:  # a reader with a newer snapshot got here first
                    self._entries[key] = old
                    self._bytes += old[2].nbytes
                    return
            self._entries[key] = (seq, token, ids)
            self._bytes += ids.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, (_, _, gone) = self._entries.popitem(last=False)
                self._bytes -= gone.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


def _doc(row: Any) -> StoredDocument:
    return StoredDocument(row[0], row[1], row[2], row[3] or {}, row[4])


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
    def read(self) -> Iterator[Connection]:
        """One read transaction: every query inside sees the same snapshot. Inside a
        :func:`~retrieval.store.db.deadline`, its statements stop when it passes."""
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
                    (_upsert_postgres if postgres else _upsert_sqlite)(conn, docs, counts)
        return counts

    def delete(self, external_ids: Sequence[str]) -> tuple[int, list[str]]:
        """Delete documents by external id; returns (deleted count, ids not found)."""
        found: set[str] = set()
        with self.write() as conn:
            for part in _chunks(list(external_ids)):
                found.update(conn.scalars(select(Document.external_id).where(Document.external_id.in_(part))))
                conn.execute(delete(Document).where(Document.external_id.in_(part)))
        missing = [e for e in dict.fromkeys(external_ids) if e not in found]
        return len(found), missing

    def get(self, external_id: str) -> StoredDocument | None:
        with self.read() as conn:
            row = conn.execute(select(*_DOC_COLUMNS).where(Document.external_id == external_id)).first()
        return _doc(row) if row else None

    def get_many(self, external_ids: Sequence[str]) -> dict[str, StoredDocument]:
        """The stored documents among ``external_ids``, by external id."""
        out: dict[str, StoredDocument] = {}
        with self.read() as conn:
            for part in _chunks(list(dict.fromkeys(external_ids))):
                for row in conn.execute(select(*_DOC_COLUMNS).where(Document.external_id.in_(part))):
                    out[row[1]] = _doc(row)
        return out

    @staticmethod
    def docs_by_ids(conn: Connection, ids: Sequence[int]) -> dict[int, StoredDocument]:
        out: dict[int, StoredDocument] = {}
        for part in _chunks(list(ids)):
            for row in conn.execute(_DOCS_BY_IDS, {"ids": list(part)}):
                out[row[0]] = _doc(row)
        return out

    @staticmethod
    def iter_docs(conn: Connection, batch: int = 10_000,
                  max_bytes: int | None = None) -> Iterator[list[tuple[int, str, str | None]]]:
        """(id, text, content_hash) of every document, in id order, in batches of at most
        ``batch`` documents; with ``max_bytes``, batches shrink to hold about that much
        text (sized by the texts seen so far), so that large documents never make a
        batch large."""
        last = -1
        size = batch if max_bytes is None else min(batch, FIRST_PAGE)
        while True:
            rows = conn.execute(
                select(Document.id, Document.text, Document.content_hash)
                .where(Document.id > last)
                .order_by(Document.id)
                .limit(size)
            ).all()
            if not rows:
                return
            yield [(r[0], r[1], r[2]) for r in rows]
            last = rows[-1][0]
            if max_bytes is not None:
                size = page_size(sum(len(r[1]) for r in rows) / len(rows), batch, max_bytes)

    @staticmethod
    def all_ids(conn: Connection) -> np.ndarray:
        return np.fromiter(conn.scalars(select(Document.id).order_by(Document.id)), dtype=np.int64)

    # -- metadata filters -------------------------------------------------------------

    def _evaluate(self, conn: Connection, f: Filter, ids: Sequence[int] | None = None) -> np.ndarray:
        cond = compile_filter(f, conn.dialect.name)
        if ids is None and conn.dialect.name == "sqlite":
            # One string of ids instead of a row each: a filter matching half of 100,000
            # documents is read in 6 ms this way, 33 ms as rows through the driver.
            joined = conn.execute(select(func.group_concat(Document.id)).where(cond)).scalar()
            out = np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.empty(0, np.int64)
        elif ids is None:
            out = np.fromiter(conn.execute(select(Document.id).where(cond)).scalars(), dtype=np.int64)
        else:
            parts = [np.fromiter(conn.execute(select(Document.id).where(Document.id.in_(part), cond)).scalars(),
                                 dtype=np.int64) for part in _chunks(list(ids))]
            out = np.concatenate(parts) if parts else np.empty(0, np.int64)
        out.sort()
        return out

    def matching_ids(self, conn: Connection, where: Filter, *, max_seq: int | None = None) -> np.ndarray:
        """The sorted ids of the documents ``where`` matches, in ``conn``'s snapshot.

        ``max_seq`` is the snapshot's change-log position, when the caller has read it.
        """
        seq = self.max_seq(conn) if max_seq is None else max_seq
        token = self.change_token(conn, seq)
        entry = self.matches.get(where.canonical)
        if entry is not None and entry[0] == seq and entry[1] == token:
            self.matches.hits += 1
            return entry[2]
        if (entry is not None and entry[0] < seq and seq - entry[0] <= self.matches.max_refresh
                and self.change_token(conn, entry[0]) == entry[1]):  # the same history up to the entry
            oldest = self.oldest_seq(conn)
            if oldest is not None and oldest <= entry[0] + 1:  # no pruned gap in between
                changed = np.asarray(self.changed_ids(conn, entry[0], seq), dtype=np.int64)
                still = self._evaluate(conn, where, changed.tolist())
                kept = entry[2][~np.isin(entry[2], changed)]
                ids = np.concatenate([kept, still])
                ids.sort(kind="stable")  # two sorted runs: a linear merge
                self.matches.refreshes += 1
                self.matches.put(where.canonical, seq, token, ids)
                return ids
        self.matches.misses += 1
        ids = self._evaluate(conn, where)
        self.matches.put(where.canonical, seq, token, ids)
        return ids

    def count_matching(self, where: Any) -> int:
        f = parse_filter(where)
        with self.read() as conn:
            if f is None:
                return int(conn.scalar(select(func.count()).select_from(Document)) or 0)
            return len(self.matching_ids(conn, f))

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
        with self.read() as conn:
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

    @staticmethod
    def invalid_metadata(conn: Connection, limit: int = 20) -> list[str]:
        """External ids of documents whose stored metadata is not valid JSON (SQLite took
        NaN and infinities before they were refused everywhere; its JSON functions, and so
        every filtered search, fail on them). PostgreSQL's jsonb cannot hold them."""
        if conn.dialect.name != "sqlite":
            return []
        return list(conn.exec_driver_sql(
            "SELECT external_id FROM documents WHERE metadata IS NOT NULL AND NOT json_valid(metadata) "
            f"ORDER BY id LIMIT {int(limit)}").scalars())

    # -- change log -------------------------------------------------------------------

    @staticmethod
    def max_seq(conn: Connection) -> int:
        return int(conn.scalar(_MAX_SEQ) or 0)

    @staticmethod
    def oldest_seq(conn: Connection) -> int | None:
        """The lowest change-log position still stored (older rows were pruned)."""
        value = conn.scalar(_MIN_SEQ)
        return None if value is None else int(value)

    @staticmethod
    def change_token(conn: Connection, seq: int) -> str | None:
        """The token of change ``seq`` (revision 0004): "" for position 0 and for a change
        logged before tokens existed; None when the change log holds no change ``seq``."""
        if seq <= 0:
            return ""
        row = conn.execute(_TOKEN_AT, {"seq": seq}).first()
        return None if row is None else (row[0] or "")

    @staticmethod
    def nth_change_after(conn: Connection, after: int, n: int) -> int | None:
        """The position of the ``n``-th change after ``after`` (None: there are fewer):
        a sync that applies a backlog in steps stops at a change that exists, whose token
        it can record (positions have gaps: rolled-back transactions, pruned rows)."""
        return conn.scalar(select(Change.seq).where(Change.seq > after).order_by(Change.seq)
                           .offset(max(0, n - 1)).limit(1))

    @staticmethod
    def store_id(conn: Connection) -> str:
        """The database's identity (revision 0004), made with its schema."""
        return str(conn.scalar(_STORE_ID) or "")

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

    @staticmethod
    def changed_ids(conn: Connection, after: int, upto: int) -> list[int]:
        """Distinct ids of documents changed by log entries in (after, upto]."""
        return list(conn.scalars(_CHANGED_IDS, {"after": after, "upto": upto}))

    @staticmethod
    def oldest_change_after(conn: Connection, after: int) -> float | None:
        """When the oldest change not yet applied was made (epoch seconds, UTC), or None."""
        ts = conn.scalar(select(func.min(Change.changed_at)).where(Change.seq > after))
        if ts is None:
            return None
        from datetime import datetime

        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts)
        if ts.tzinfo is None:  # SQLite: UTC text
            ts = ts.replace(tzinfo=UTC)
        return ts.timestamp()

    @staticmethod
    def count_changes(conn: Connection, after: int) -> int:
        return int(conn.scalar(select(func.count()).select_from(Change).where(Change.seq > after)) or 0)

    # -- embeddings -------------------------------------------------------------------

    @staticmethod
    def embeddings_for(conn: Connection, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in _chunks(list(hashes)):
            rows = conn.execute(
                select(Embedding.content_hash, Embedding.vector).where(
                    Embedding.model_key == model_key, Embedding.content_hash.in_(part)
                )
            )
            for h, blob in rows:
                out[h] = np.frombuffer(blob, dtype="<f4")
        return out

    @staticmethod
    def docs_without_vectors(conn: Connection, model_key: str, after_id: int, limit: int) -> list[tuple[int, str, str | None]]:
        """(id, text, content_hash) of up to ``limit`` documents after ``after_id``, in id
        order, whose stored hash has no vector for ``model_key`` (a NULL hash counts as
        none). Keyset-paged on the primary key, and the anti-join is served by the
        (model_key, content_hash) unique index: each page costs its own size."""
        return [(r[0], r[1], r[2]) for r in conn.execute(_WITHOUT_VECTORS, {"key": model_key, "after": after_id,
                                                                             "limit": limit})]

    @staticmethod
    def count_docs_without_vectors(conn: Connection, model_key: str) -> int:
        """How many documents :meth:`docs_without_vectors` would return in all."""
        return int(conn.scalar(select(func.count()).select_from(_WITHOUT_VECTORS_ALL.subquery()), {"key": model_key}) or 0)

    def add_embeddings(self, model_key: str, dim: int, items: Sequence[tuple[str, np.ndarray]]) -> None:
        """Store vectors for content hashes; hashes already stored for the model are kept
        (in a read-only store, nothing: they are derived data, computed again when needed)."""
        if not items or self.readonly:
            return
        if self.dialect == "postgresql":
            unique = {h: v for h, v in items}
            with self.write() as conn:
                _staging(conn, "retrieval_staging_vectors", "model_key text, content_hash text, dim integer, vector bytea",
                         ((model_key, h, dim, np.asarray(v, dtype="<f4").tobytes()) for h, v in unique.items()))
                conn.execute(text(_VECTORS_FROM_STAGING))
            return
        with self.write() as conn:
            have: set[str] = set()
            for part in _chunks([h for h, _ in items]):
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

    # -- status -----------------------------------------------------------------------

    def stats(self, model_key: str | None) -> dict[str, int]:
        with self.read() as conn:
            docs = int(conn.scalar(select(func.count()).select_from(Document)) or 0)
            embedded = 0
            if model_key is not None:
                embedded = int(
                    conn.scalar(
                        select(func.count())
                        .select_from(Document)
                        .join(
                            Embedding,
                            (Embedding.content_hash == Document.content_hash) & (Embedding.model_key == model_key),
                        )
                    )
                    or 0
                )
            vectors = int(conn.scalar(select(func.count()).select_from(Embedding)) or 0)
            max_seq = self.max_seq(conn)
        return {"documents": docs, "embedded": embedded, "stored_vectors": vectors, "max_seq": max_seq}

    def database_bytes(self) -> int:
        """The database's size on disk: the SQLite file with its WAL, or PostgreSQL's
        ``pg_database_size``."""
        if self.dialect != "postgresql":
            return db.file_size(self.url)
        with self.read() as conn:
            return int(conn.scalar(text("SELECT pg_database_size(current_database())")) or 0)

    def ping(self) -> None:
        with self.read() as conn:
            conn.execute(text("SELECT 1"))

    def count_documents(self) -> int:
        with self.read() as conn:
            return int(conn.scalar(select(func.count()).select_from(Document)) or 0)

    def backlog(self, after: int) -> tuple[int, float | None]:
        """(change-log entries after ``after``, when the oldest of them was made), in one snapshot."""
        with self.read() as conn:
            return self.count_changes(conn, after), self.oldest_change_after(conn, after)

    # -- space ------------------------------------------------------------------------

    def reclaimable(self, keep_model: str | None, applied_floor: int) -> dict[str, int]:
        """What compaction would give back: vectors no document uses (and, with
        ``keep_model``, every other model's), change-log rows below ``applied_floor``,
        and the database file's free pages."""
        with self.read() as conn:
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


def _upsert_sqlite(conn: Connection, docs: Sequence[NewDocument], counts: UpsertCounts) -> None:
    """One batch of :meth:`Store.upsert_batches` on SQLite (the write lock is held)."""
    existing: dict[str, tuple[int, str | None, str, Any]] = {}
    for part in _chunks([d.external_id for d in docs]):
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


def _upsert_postgres(conn: Connection, docs: Sequence[NewDocument], counts: UpsertCounts) -> None:
    """One batch of :meth:`Store.upsert_batches` on PostgreSQL: one ``INSERT ... ON
    CONFLICT DO UPDATE`` from a staging table filled by COPY. New ids are inserted,
    changed ones updated, identical ones left alone (the WHERE of DO UPDATE), whatever
    other writers do meanwhile."""
    latest = {d.external_id: d for d in docs}  # one row per id: ON CONFLICT may touch a row once
    for d in latest.values():
        if "\x00" in d.text or "\x00" in d.external_id:
            raise StoreError(f"document {d.external_id!r}: PostgreSQL cannot store a NUL character in a text")
    _staging(conn, "retrieval_staging_documents", "external_id text, text text, metadata jsonb, content_hash text",
             ((d.external_id, d.text, _json_or_none(d.metadata), content_hash(d.text)) for d in latest.values()))
    inserted, written = conn.execute(text(_UPSERT_FROM_STAGING)).one()
    counts.added += int(inserted)
    counts.updated += int(written) - int(inserted)
    counts.unchanged += len(docs) - int(written)


def _unused_embeddings(model_keep: str | None) -> Any:
    """Embeddings no document uses: hashes of no current text, or another model's vectors."""
    used = exists().where(Document.content_hash == Embedding.content_hash)
    condition = not_(used)
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


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _staging(conn: Connection, table: str, columns: str, rows: Iterable[tuple[Any, ...]]) -> None:
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

_VECTORS_FROM_STAGING = """
INSERT INTO embeddings (model_key, content_hash, dim, vector)
SELECT model_key, content_hash, dim, vector FROM retrieval_staging_vectors
ON CONFLICT (model_key, content_hash) DO NOTHING
"""
