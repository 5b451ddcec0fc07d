"""One read transaction, in domain terms: ``with store.read() as snap:``.

Every method reads the same database state (SQLite's snapshot; REPEATABLE READ READ ONLY
on PostgreSQL), so a search or a sync that asks several questions gets answers that
agree: the change-log position, the documents changed since an index's position, the
documents a filter matches, keyword matches, stored vectors. Callers outside ``store/``
see no SQL: filters are compiled and keyword queries written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Connection, bindparam, exists, func, select

from retrieval.filters import Filter
from retrieval.store import keyword as kw
from retrieval.store.filters import compile_filter
from retrieval.store.models import Change, Document, Embedding, Passage, StoreInfo
from retrieval.store.records import FIRST_PAGE, StoredDocument, chunks, page_size, stored
from retrieval.store.terms import KeywordHit

if TYPE_CHECKING:
    from retrieval.store.matches import MatchCache

_DOC_COLUMNS = (Document.id, Document.external_id, Document.text, Document.meta, Document.content_hash)
# Statements on the search path are built once: constructing a select() costs more than
# SQLite takes to run it (compiled forms are cached by SQLAlchemy either way).
_MAX_SEQ = select(func.coalesce(func.max(Change.seq), 0))
_MIN_SEQ = select(func.min(Change.seq))
_TOKEN_AT = select(Change.token).where(Change.seq == bindparam("seq"))
_STORE_ID = select(StoreInfo.value).where(StoreInfo.key == "store_id")
_DOCS_BY_IDS = select(*_DOC_COLUMNS).where(Document.id.in_(bindparam("ids", expanding=True)))
_PASSAGES_OF = (
    select(Passage.doc_id, Passage.ordinal, Passage.start_char, Passage.end_char, Passage.source_hash)
    .where(Passage.splitter == bindparam("splitter"), Passage.doc_id.in_(bindparam("ids", expanding=True)))
    .order_by(Passage.doc_id, Passage.ordinal)
)
_CHANGED_IDS = (
    select(Change.doc_id)
    .where(Change.seq > bindparam("after"), Change.seq <= bindparam("upto"))
    .group_by(Change.doc_id)
)
# A document needs vectors for a model when its text has none and it was not split into
# passages (revision 0005) that all have one. (The sync splits a document longer than
# the model's window and embeds its passages, not its whole, truncated text.)
_SPLIT = exists().where(Passage.doc_id == Document.id, Passage.source_hash == Document.content_hash)
_PASSAGE_WITHOUT_VECTOR = exists().where(
    Passage.doc_id == Document.id, Passage.source_hash == Document.content_hash,
    ~exists().where(Embedding.model_key == bindparam("key"), Embedding.content_hash == Passage.content_hash))
NO_VECTOR = ~exists().where(Embedding.model_key == bindparam("key"), Embedding.content_hash == Document.content_hash) \
    & (~_SPLIT | _PASSAGE_WITHOUT_VECTOR)
_WITHOUT_VECTORS_ALL = select(Document.id).where(NO_VECTOR)
_WITHOUT_VECTORS = (
    select(Document.id, Document.text, Document.content_hash)
    .where(Document.id > bindparam("after"), NO_VECTOR)
    .order_by(Document.id)
    .limit(bindparam("limit"))
)


class Snapshot:
    """One database state, read through one connection (``conn``, for ``store/`` itself)."""

    def __init__(self, conn: Connection, matches: MatchCache) -> None:
        self.conn = conn
        self._matches = matches

    @property
    def dialect(self) -> str:
        return self.conn.dialect.name

    # -- the change log ------------------------------------------------------------

    def max_seq(self) -> int:
        return int(self.conn.scalar(_MAX_SEQ) or 0)

    def oldest_seq(self) -> int | None:
        """The lowest change-log position still stored (older rows were pruned)."""
        value = self.conn.scalar(_MIN_SEQ)
        return None if value is None else int(value)

    def change_token(self, seq: int) -> str | None:
        """The token of change ``seq`` (revision 0004): "" for position 0 and for a change
        logged before tokens existed; None when the change log holds no change ``seq``."""
        if seq <= 0:
            return ""
        row = self.conn.execute(_TOKEN_AT, {"seq": seq}).first()
        return None if row is None else (row[0] or "")

    def nth_change_after(self, after: int, n: int) -> int | None:
        """The position of the ``n``-th change after ``after`` (None: there are fewer):
        a sync that applies a backlog in steps stops at a change that exists, whose token
        it can record (positions have gaps: rolled-back transactions, pruned rows)."""
        return self.conn.scalar(select(Change.seq).where(Change.seq > after).order_by(Change.seq)
                                .offset(max(0, n - 1)).limit(1))

    def store_id(self) -> str:
        """The database's identity (revision 0004), made with its schema."""
        return str(self.conn.scalar(_STORE_ID) or "")

    def changed_ids(self, after: int, upto: int) -> list[int]:
        """Distinct ids of documents changed by log entries in (after, upto]."""
        return list(self.conn.scalars(_CHANGED_IDS, {"after": after, "upto": upto}))

    def oldest_change_after(self, after: int) -> float | None:
        """When the oldest change not yet applied was made (epoch seconds, UTC), or None."""
        ts = self.conn.scalar(select(func.min(Change.changed_at)).where(Change.seq > after))
        if ts is None:
            return None
        if isinstance(ts, str):
            ts = datetime.fromisoformat(ts)
        if ts.tzinfo is None:  # SQLite: UTC text
            ts = ts.replace(tzinfo=UTC)
        return float(ts.timestamp())

    def count_changes(self, after: int) -> int:
        return int(self.conn.scalar(select(func.count()).select_from(Change).where(Change.seq > after)) or 0)

    # -- documents ------------------------------------------------------------------

    def documents(self, ids: Sequence[int]) -> dict[int, StoredDocument]:
        """The documents among internal ``ids`` that exist, by id."""
        out: dict[int, StoredDocument] = {}
        for part in chunks(list(ids)):
            for row in self.conn.execute(_DOCS_BY_IDS, {"ids": list(part)}):
                out[row[0]] = stored(row)
        return out

    def passages(self, splitter: str, ids: Sequence[int]) -> dict[int, dict[str, list[tuple[int, int]]]]:
        """How ``splitter`` split the documents among ``ids`` that it split into several
        passages: by id, by the text's content hash then, [(start, end) per passage]."""
        out: dict[int, dict[str, list[tuple[int, int]]]] = {}
        for part in chunks(list(ids)):
            for doc_id, ordinal, start, end, source in self.conn.execute(
                    _PASSAGES_OF, {"splitter": splitter, "ids": list(part)}):
                spans = out.setdefault(doc_id, {}).setdefault(source, [])
                if ordinal == len(spans):
                    spans.append((start, end))
        return out

    def iter_docs(self, batch: int = 10_000,
                  max_bytes: int | None = None) -> Iterator[list[tuple[int, str, str | None]]]:
        """(id, text, content_hash) of every document, in id order, in batches of at most
        ``batch`` documents; with ``max_bytes``, batches shrink to hold about that much
        text (sized by the texts seen so far), so that large documents never make a
        batch large."""
        last = -1
        size = batch if max_bytes is None else min(batch, FIRST_PAGE)
        while True:
            rows = self.conn.execute(
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

    def all_ids(self) -> np.ndarray:
        return np.fromiter(self.conn.scalars(select(Document.id).order_by(Document.id)), dtype=np.int64)

    def count_documents(self) -> int:
        return int(self.conn.scalar(select(func.count()).select_from(Document)) or 0)

    def invalid_metadata(self, limit: int = 20) -> list[str]:
        """External ids of documents whose stored metadata is not valid JSON (SQLite took
        NaN and infinities before they were refused everywhere; its JSON functions, and so
        every filtered search, fail on them). PostgreSQL's jsonb cannot hold them."""
        if self.dialect != "sqlite":
            return []
        return list(self.conn.exec_driver_sql(
            "SELECT external_id FROM documents WHERE metadata IS NOT NULL AND NOT json_valid(metadata) "
            f"ORDER BY id LIMIT {int(limit)}").scalars())

    # -- stored vectors -------------------------------------------------------------

    def embeddings(self, model_key: str, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``model_key`` for these content hashes, by hash."""
        out: dict[str, np.ndarray] = {}
        for part in chunks(list(hashes)):
            rows = self.conn.execute(
                select(Embedding.content_hash, Embedding.vector).where(
                    Embedding.model_key == model_key, Embedding.content_hash.in_(part)
                )
            )
            for h, blob in rows:
                out[h] = np.frombuffer(blob, dtype="<f4")
        return out

    def docs_without_vectors(self, model_key: str, after_id: int, limit: int) -> list[tuple[int, str, str | None]]:
        """(id, text, content_hash) of up to ``limit`` documents after ``after_id``, in id
        order, whose stored hash has no vector for ``model_key`` (a NULL hash counts as
        none). Keyset-paged on the primary key, and the anti-join is served by the
        (model_key, content_hash) unique index: each page costs its own size."""
        rows = self.conn.execute(_WITHOUT_VECTORS, {"key": model_key, "after": after_id, "limit": limit})
        return [(r[0], r[1], r[2]) for r in rows]

    def count_docs_without_vectors(self, model_key: str) -> int:
        """How many documents :meth:`docs_without_vectors` would return in all."""
        return int(self.conn.scalar(select(func.count()).select_from(_WITHOUT_VECTORS_ALL.subquery()),
                                    {"key": model_key}) or 0)

    # -- metadata filters -----------------------------------------------------------

    def _evaluate(self, f: Filter, ids: Sequence[int] | None = None) -> np.ndarray:
        cond = compile_filter(f, self.dialect)
        if ids is None and self.dialect == "sqlite":
            # One string of ids instead of a row each: a filter matching half of 100,000
            # documents is read in 6 ms this way, 33 ms as rows through the driver.
            joined = self.conn.execute(select(func.group_concat(Document.id)).where(cond)).scalar()
            out = np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.empty(0, np.int64)
        elif ids is None:
            out = np.fromiter(self.conn.execute(select(Document.id).where(cond)).scalars(), dtype=np.int64)
        else:
            parts = [np.fromiter(self.conn.execute(select(Document.id).where(Document.id.in_(part), cond)).scalars(),
                                 dtype=np.int64) for part in chunks(list(ids))]
            out = np.concatenate(parts) if parts else np.empty(0, np.int64)
        out.sort()
        return out

    def matching_ids(self, where: Filter, *, max_seq: int | None = None) -> np.ndarray:
        """The sorted ids of the documents ``where`` matches. ``max_seq`` is this
        snapshot's change-log position, when the caller has read it.

        Matches are cached by filter and position (:class:`MatchCache`): a repeated
        filter costs what changed since its entry, evaluated on the changed documents only."""
        cache = self._matches
        seq = self.max_seq() if max_seq is None else max_seq
        token = self.change_token(seq)
        entry = cache.get(where.canonical)
        if entry is not None and entry[0] == seq and entry[1] == token:
            cache.hits += 1
            return entry[2]
        if (entry is not None and entry[0] < seq and seq - entry[0] <= cache.max_refresh
                and self.change_token(entry[0]) == entry[1]):  # the same history up to the entry
            oldest = self.oldest_seq()
            if oldest is not None and oldest <= entry[0] + 1:  # no pruned gap in between
                changed = np.asarray(self.changed_ids(entry[0], seq), dtype=np.int64)
                still = self._evaluate(where, changed.tolist())
                kept = entry[2][~np.isin(entry[2], changed)]
                ids = np.concatenate([kept, still])
                ids.sort(kind="stable")  # two sorted runs: a linear merge
                cache.refreshes += 1
                cache.put(where.canonical, seq, token, ids)
                return ids
        cache.misses += 1
        ids = self._evaluate(where)
        cache.put(where.canonical, seq, token, ids)
        return ids

    # -- keyword search -------------------------------------------------------------

    def keyword(self, query: str, limit: int, *, where: Filter | None = None, snippets: bool = True) -> list[KeywordHit]:
        """The ``limit`` documents that best match ``query`` (BM25 on SQLite, ts_rank_cd on
        PostgreSQL), best first, among those ``where`` matches (:func:`retrieval.store.keyword.keyword_search`)."""
        condition = compile_filter(where, self.dialect) if where is not None else None
        return kw.keyword_search(self.conn, query, limit, condition=condition, snippets=snippets)

    def keyword_snippets(self, query: str, ids: list[int]) -> dict[int, tuple[str, tuple[tuple[int, int], ...]]]:
        """Snippets of ``query``'s matches in the documents ``ids``, by id."""
        return kw.keyword_snippets(self.conn, query, ids)

    def keyword_available(self) -> bool:
        """Whether the database has the keyword index (an older schema may not)."""
        return kw.keyword_available(self.conn)

    def keyword_problems(self, limit: int = 20) -> list[str]:
        """Documents the keyword index misses, and indexed rows with no document."""
        return kw.keyword_problems(self.conn, limit)


__all__ = ["NO_VECTOR", "Snapshot"]
