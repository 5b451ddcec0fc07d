"""The query pipeline: from query vectors to hits, consistent with one database snapshot.

A search runs these stages inside one read transaction, so that what it returns agrees
with the database at that moment, whatever the index version has caught up with:

1. :func:`backlog`: the documents changed since the index version was published, read
   from the change log (one indexed read; empty when the index is current);
2. :func:`dense_candidates`: the index version's top-k, the backlog excluded inside the
   index search, so a deleted or replaced document is never a candidate;
3. :func:`exact_candidates`: the backlog's current documents scored exactly from their
   stored vectors (embedded on the spot when a text has none yet);
4. :func:`merge`: one ranked list per query out of any number of candidate lists, best
   score first, ties by internal id, cut at k and ``min_score``;
5. :func:`fetch_hits`: the winners' rows, from the same snapshot.

Each candidate source returns :class:`Candidates`; that is the seam where more sources
(keyword search), restrictions (metadata filters: an allowed set for the index search,
a condition for the exact stage) and other merges (rank fusion) plug in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.index.segments import IndexVersion, set_search_threads
from retrieval.search.hits import Hit
from retrieval.store.repository import Store, StoredDocument
from retrieval.vectors import ensure_vectors

if TYPE_CHECKING:
    from sqlalchemy import Connection


@dataclass(frozen=True)
class Candidates:
    """Scored documents per query: ``scores`` and ``ids`` are (queries, m); id -1 pads."""

    scores: np.ndarray
    ids: np.ndarray

    @classmethod
    def empty(cls, queries: int) -> Candidates:
        return cls(np.empty((queries, 0), np.float32), np.empty((queries, 0), np.int64))


@dataclass(frozen=True)
class Backlog:
    """Documents changed after the index version's last applied change, as of the snapshot."""

    ids: np.ndarray  # every changed id (deleted ones included)
    documents: dict[int, StoredDocument]  # the changed ones that still exist, current rows


def backlog(store: Store, conn: Connection, version: IndexVersion) -> Backlog:
    max_seq = store.max_seq(conn)
    if max_seq <= version.manifest.last_seq:
        return Backlog(np.empty(0, np.int64), {})
    changed = store.changed_ids(conn, version.manifest.last_seq, max_seq)
    return Backlog(np.asarray(changed, dtype=np.int64), store.docs_by_ids(conn, changed))


def dense_candidates(version: IndexVersion, vectors: np.ndarray, k: int, *, exclude: np.ndarray,
                     ef_search: int | None = None) -> Candidates:
    scores, ids = version.search(vectors, k, exclude=exclude, ef_search=ef_search)
    return Candidates(scores, ids)


def exact_candidates(store: Store, encoder: Callable[[], Encoder], documents: dict[int, StoredDocument],
                     vectors: np.ndarray) -> Candidates:
    """Every document given, scored exactly against every query."""
    if not documents:
        return Candidates.empty(len(vectors))
    rows = [(d.id, d.text, d.content_hash) for d in documents.values()]
    ids, matrix = ensure_vectors(store, encoder(), rows)
    scores = np.asarray(vectors @ matrix.T, dtype=np.float32)
    return Candidates(scores, np.broadcast_to(ids, scores.shape))


def merge(parts: Sequence[Candidates], k: int, min_score: float | None) -> list[list[tuple[float, int]]]:
    """The top ``k`` (score, id) per query over all parts: best first, ties by id."""
    queries = len(parts[0].scores) if parts else 0
    results: list[list[tuple[float, int]]] = []
    for qi in range(queries):
        cands = [(float(s), int(i)) for part in parts for s, i in zip(part.scores[qi], part.ids[qi]) if i >= 0]
        cands.sort(key=lambda c: (-c[0], c[1]))
        results.append([c for c in cands[:k] if min_score is None or c[0] >= min_score])
    return results


def fetch_hits(store: Store, conn: Connection, ranked: list[list[tuple[float, int]]]) -> list[list[Hit]]:
    docs = store.docs_by_ids(conn, sorted({i for r in ranked for _, i in r}))
    hits: list[list[Hit]] = []
    for r in ranked:
        row = []
        for score, i in r:
            d = docs.get(i)
            if d is None:  # cannot happen: the snapshot holds every candidate
                continue
            row.append(Hit(d.external_id, score, d.text, d.metadata, d.id))
        hits.append(row)
    return hits


def search(store: Store, version: IndexVersion, encoder: Callable[[], Encoder], vectors: np.ndarray, k: int, *,
           min_score: float | None = None, ef_search: int | None = None, threads: int = 1) -> list[list[Hit]]:
    """Run the pipeline for query ``vectors`` (one row per query) against ``version``.

    ``encoder`` is called only when a backlog document has no stored vector yet.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    set_search_threads(threads)
    with store.read() as conn:
        pending = backlog(store, conn, version)
        parts = [
            dense_candidates(version, vectors, k, exclude=pending.ids, ef_search=ef_search),
            exact_candidates(store, encoder, pending.documents, vectors),
        ]
        return fetch_hits(store, conn, merge(parts, k, min_score))


__all__ = ["Backlog", "Candidates", "backlog", "dense_candidates", "exact_candidates", "fetch_hits", "merge", "search"]
