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

A metadata filter is evaluated first, in the same snapshot, into the sorted ids it
allows: the index search gets them as an allow-list (see :meth:`IndexVersion.search` for
the plan by selectivity), the backlog is cut to them, and keyword search applies the
filter's SQL condition. Keyword mode ranks by the keyword index (BM25 over SQLite's FTS5,
``ts_rank_cd`` over PostgreSQL's tsvector; same snapshot, so never stale); hybrid mode
fuses the dense and keyword rankings (:func:`_fuse`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.config import SEARCH_MODES
from retrieval.embed.base import Encoder
from retrieval.errors import ArgumentError, IndexDivergedError
from retrieval.filters import Filter
from retrieval.index.rows import PASSAGE_BITS, docs_of, ordinals_of
from retrieval.index.segment import EXACT_MAX_ROWS, IndexVersion, set_search_threads
from retrieval.search.hits import Hit
from retrieval.store.records import StoredDocument
from retrieval.store.repository import Store
from retrieval.sync.passages import Splitter, passage_vectors
from retrieval.sync.replay import follows

if TYPE_CHECKING:
    from retrieval.store.snapshot import Snapshot
    from retrieval.store.terms import KeywordHit


@dataclass(frozen=True)
class Candidates:
    """Scored documents per query: ``scores`` and ``ids`` are (queries, m); id -1 pads.
    ``rows``, when given, is the index row of each document's best passage."""

    scores: np.ndarray
    ids: np.ndarray
    rows: np.ndarray | None = None

    @classmethod
    def empty(cls, queries: int) -> Candidates:
        return cls(np.empty((queries, 0), np.float32), np.empty((queries, 0), np.int64))


@dataclass(frozen=True)
class Backlog:
    """Documents changed after the index version's last applied change, as of the snapshot."""

    ids: np.ndarray  # every changed id (deleted ones included)
    documents: dict[int, StoredDocument]  # the changed ones that still exist, current rows


def backlog(snap: Snapshot, version: IndexVersion, *, max_seq: int | None = None) -> Backlog:
    max_seq = snap.max_seq() if max_seq is None else max_seq
    if max_seq <= version.manifest.last_seq:
        return Backlog(np.empty(0, np.int64), {})
    changed = snap.changed_ids(version.manifest.last_seq, max_seq)
    return Backlog(np.asarray(changed, dtype=np.int64), snap.documents(changed))


def dense_candidates(version: IndexVersion, vectors: np.ndarray, k: int, *, exclude: np.ndarray,
                     allow: np.ndarray | None = None, ef_search: int | None = None,
                     exact_rows: int = EXACT_MAX_ROWS) -> Candidates:
    scores, docs, rows = version.search_documents(vectors, k, exclude=exclude, allow=allow, ef_search=ef_search,
                                                  exact_max=exact_rows)
    if version.bits != PASSAGE_BITS:
        # An index from before passages (its next sync rebuilds it): a row is its
        # document's one passage. Downstream, rows are read with PASSAGE_BITS.
        rows = np.where(docs >= 0, docs << PASSAGE_BITS, -1)
    return Candidates(scores, docs, rows)


def exact_candidates(store: Store, encoder: Callable[[], Encoder], documents: dict[int, StoredDocument],
                     vectors: np.ndarray, splitter: Callable[[], Splitter] | None = None) -> Candidates:
    """Every document given, scored exactly against every query by its best passage."""
    if not documents:
        return Candidates.empty(len(vectors))
    enc = encoder()
    split = splitter() if splitter is not None else Splitter(0)
    got = passage_vectors(store, enc, split, [(d.id, d.text, d.content_hash) for d in documents.values()])
    scores = np.asarray(vectors @ got.matrix.T, dtype=np.float32)
    docs = docs_of(got.rows, PASSAGE_BITS)
    # Best passage per document: rows are grouped by document, in order.
    starts = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
    best = np.maximum.reduceat(scores, starts, axis=1)
    # The first row reaching the best score in each group (ties by row id).
    hit = scores >= np.repeat(best, np.diff(np.r_[starts, len(docs)]), axis=1)
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(docs)]))
    first = np.full((len(vectors), len(starts)), -1, np.int64)
    for qi in range(len(vectors)):
        cols = np.flatnonzero(hit[qi])
        _, at = np.unique(group[cols], return_index=True)
        first[qi] = got.rows[cols[at]]
    return Candidates(best.astype(np.float32), np.broadcast_to(docs[starts], best.shape), first)


def merge(parts: Sequence[Candidates], k: int, min_score: float | None) -> list[list[tuple[float, int]]]:
    """The top ``k`` (score, id) per query over all parts: best first, ties by id."""
    queries = len(parts[0].scores) if parts else 0
    results: list[list[tuple[float, int]]] = []
    for qi in range(queries):
        cands = [(float(s), int(i)) for part in parts for s, i in zip(part.scores[qi], part.ids[qi]) if i >= 0]
        cands.sort(key=lambda c: (-c[0], c[1]))
        results.append([c for c in cands[:k] if min_score is None or c[0] >= min_score])
    return results


def best_rows(parts: Sequence[Candidates]) -> list[dict[int, int]]:
    """Per query, each candidate document's best passage row (where the parts say it)."""
    queries = len(parts[0].scores) if parts else 0
    out: list[dict[int, int]] = [{} for _ in range(queries)]
    for part in parts:
        if part.rows is None:
            continue
        for qi in range(queries):
            out[qi].update((int(i), int(r)) for i, r in zip(part.ids[qi], part.rows[qi]) if i >= 0)
    return out


def fetch_hits(snap: Snapshot, ranked: list[list[tuple[float, int]]], *,
               extra: list[dict[int, dict[str, Any]]] | None = None, mode: str = "dense",
               passages: Callable[[list[StoredDocument], list[int]], list[dict[str, Any] | None]] | None = None,
               rows: list[dict[int, int]] | None = None, splitter_key: str = "") -> list[list[Hit]]:
    """The winners' rows, from the same snapshot; ``extra`` adds fields per query and id.
    With ``rows`` (each document's best passage row per query), a hit of a document longer
    than one passage carries its best passage: where the store recorded it for
    ``splitter_key`` (the index's), else where ``passages`` finds it (splitting again:
    documents the index has not caught up with)."""
    docs = snap.documents(sorted({i for r in ranked for _, i in r}))
    located: dict[tuple[int, int], dict[str, Any] | None] = {}
    # Per query, each document's best passage ordinal.
    ordinal_at = [dict(zip(q, ordinals_of(np.fromiter(q.values(), np.int64, len(q)), PASSAGE_BITS).tolist()))
                  for q in rows] if rows is not None else None
    if ordinal_at is not None:
        wanted = sorted({(i, ordinal_at[qi][i]) for qi, r in enumerate(ranked) for _, i in r
                         if i in ordinal_at[qi] and i in docs})
        recorded = snap.passages(splitter_key, sorted({i for i, _ in wanted})) if wanted and splitter_key else {}
        missing = []
        for i, ordinal in wanted:
            spans = recorded.get(i, {}).get(docs[i].content_hash or "", [])
            if ordinal < len(spans):
                start, end = spans[ordinal]
                located[(i, ordinal)] = {"ordinal": ordinal, "start": start, "end": end,
                                         "text": docs[i].text[start:end], "of": len(spans)}
            elif ordinal > 0 or i in recorded:
                # Changed since the split, or not split by the index yet (the backlog). A
                # document with no rows whose best passage is its first is taken as one
                # passage: a sync records every document it splits in several.
                missing.append((i, ordinal))
        if missing and passages is not None:
            found = passages([docs[i] for i, _ in missing], [o for _, o in missing])
            located.update(zip(missing, found))
    hits: list[list[Hit]] = []
    for qi, r in enumerate(ranked):
        row = []
        for score, i in r:
            d = docs.get(i)
            if d is None:  # cannot happen: the snapshot holds every candidate
                continue
            more = dict(extra[qi].get(i, {})) if extra is not None else {}
            if ordinal_at is not None and i in ordinal_at[qi]:
                more["passage"] = located.get((i, ordinal_at[qi][i]))
            row.append(Hit(d.external_id, score, d.text, d.metadata, d.id, mode=mode, **more))
        hits.append(row)
    return hits


def locate_passages(encoder: Callable[[], Encoder], splitter: Callable[[], Splitter]
                    ) -> Callable[[list[StoredDocument], list[int]], list[dict[str, Any] | None]]:
    """Where passage ``ordinal`` of each document lies (None for a document that is one
    passage), found by splitting the documents again as the index did."""
    def locate(documents: list[StoredDocument], ordinals: list[int]) -> list[dict[str, Any] | None]:
        split = splitter().split(encoder(), [d.text for d in documents])
        out: list[dict[str, Any] | None] = []
        for d, ordinal, parts in zip(documents, ordinals, split):
            if len(parts) < 2 or ordinal >= len(parts):
                out.append(None)
                continue
            p = parts[ordinal]
            out.append({"ordinal": ordinal, "start": p.start, "end": p.end, "text": p.text(d.text),
                        "of": len(parts)})
        return out

    return locate


MODES = SEARCH_MODES
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009)
HYBRID_DEPTH = 100  # candidates taken from each list before fusing


@dataclass(frozen=True)
class Request:
    """What to search for: dense query ``vectors`` (one row per query; None in keyword
    mode), the query ``texts`` (keyword and hybrid modes), and how."""

    k: int
    vectors: np.ndarray | None = None
    texts: Sequence[str] | None = None
    mode: str = "dense"
    where: Filter | None = None
    min_score: float | None = None
    alpha: float | None = None  # hybrid: convex combination of normalised scores instead of RRF
    exclude: Sequence[int] = ()  # internal ids never returned (the examples of a recommendation)
    depth: int = HYBRID_DEPTH
    snippets: bool = True  # keyword and hybrid hits carry snippets

    @property
    def queries(self) -> int:
        return len(self.vectors) if self.vectors is not None else len(self.texts or ())


def _dense_ranked(store: Store, version: IndexVersion, encoder: Callable[[], Encoder],
                  req: Request, pending: Backlog, allowed: np.ndarray | None, k: int,
                  ef_search: int | None, exact_rows: int, splitter: Callable[[], Splitter] | None = None
                  ) -> tuple[list[list[tuple[float, int]]], list[dict[int, int]]]:
    assert req.vectors is not None
    vectors = np.ascontiguousarray(req.vectors, dtype=np.float32)
    exclude = pending.ids
    if len(req.exclude):
        exclude = np.union1d(exclude, np.asarray(req.exclude, dtype=np.int64))
    documents = pending.documents
    if documents and (allowed is not None or len(req.exclude)):
        keep = set(allowed.tolist()) if allowed is not None else None
        skip = set(req.exclude)
        documents = {i: d for i, d in documents.items() if (keep is None or i in keep) and i not in skip}
    parts = [
        dense_candidates(version, vectors, k, exclude=exclude, allow=allowed, ef_search=ef_search,
                         exact_rows=exact_rows),
        exact_candidates(store, encoder, documents, vectors, splitter),
    ]
    return merge(parts, k, None), best_rows(parts)


def _keyword_ranked(snap: Snapshot, req: Request, k: int) -> list[list[tuple[float, int, KeywordHit]]]:
    assert req.texts is not None and not len(req.exclude), "examples (vector arithmetic) are dense-only"
    return [[(h.score, h.id, h) for h in snap.keyword(text, k, where=req.where, snippets=False)]
            for text in req.texts]


def _with_snippets(snap: Snapshot, req: Request, ranked: list[list[tuple[float, int]]],
                   extra: list[dict[int, dict[str, Any]]]) -> list[dict[int, dict[str, Any]]]:
    """Snippets for the final hits only (see :func:`keyword_snippets`)."""
    if not req.snippets:
        return extra
    for text, row, more in zip(req.texts or (), ranked, extra):
        for i, (snippet, highlights) in snap.keyword_snippets(text, [i for _, i in row]).items():
            more.setdefault(i, {}).update(snippet=snippet, highlights=highlights)
    return extra


def _fuse(dense: list[tuple[float, int]], keyword: list[tuple[float, int, KeywordHit]], k: int,
          alpha: float | None) -> tuple[list[tuple[float, int]], dict[int, dict[str, Any]]]:
    """One hybrid list: reciprocal rank fusion of the two rankings (or, with ``alpha``, a
    convex combination of their min-max normalised scores), best first, ties by id."""
    d_rank = {i: r for r, (_, i) in enumerate(dense, 1)}
    k_rank = {h[1]: r for r, h in enumerate(keyword, 1)}
    fused: dict[int, float] = {}
    weight: dict[int, float] = {}
    if alpha is None:
        for i, r in d_rank.items():
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + r)
        for i, r in k_rank.items():
            fused[i] = fused.get(i, 0.0) + 1.0 / (RRF_K + r)
    else:
        def normalised(pairs: list[tuple[float, int]]) -> dict[int, float]:
            if not pairs:
                return {}
            lo, hi = min(s for s, _ in pairs), max(s for s, _ in pairs)
            return {i: (s - lo) / (hi - lo) if hi > lo else 1.0 for s, i in pairs}

        dn = normalised(dense)
        kn = normalised([(s, i) for s, i, _ in keyword])
        for i in set(dn) | set(kn):
            fused[i] = alpha * dn.get(i, 0.0) + (1 - alpha) * kn.get(i, 0.0)
            # A list's lowest score normalises to 0, as an absent document does: on a tie the
            # document the heavier list holds goes first (alpha=1 keeps the dense order whole).
            weight[i] = alpha * (i in dn) + (1 - alpha) * (i in kn)
    ranked = sorted(((s, i) for i, s in fused.items()), key=lambda c: (-c[0], -weight.get(c[1], 0.0), c[1]))[:k]
    extra = {i: {"dense_rank": d_rank.get(i), "keyword_rank": k_rank.get(i)} for _, i in ranked}
    return ranked, extra


def _cut(ranked: list[tuple[float, int]], min_score: float | None) -> list[tuple[float, int]]:
    return ranked if min_score is None else [c for c in ranked if c[0] >= min_score]


def check_mode(mode: str, alpha: float | None = None) -> None:
    """Refuse an unknown mode, and an ``alpha`` outside [0, 1] or without hybrid mode."""
    if mode not in MODES:
        raise ArgumentError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not 0.0 <= alpha <= 1.0):
        raise ArgumentError(f"alpha must be between 0 and 1, got {alpha!r}")
    if alpha is not None and mode != "hybrid":
        raise ArgumentError("alpha weighs the two rankings of hybrid mode; use it with mode hybrid")


def run(store: Store, version: IndexVersion | None, encoder: Callable[[], Encoder], req: Request, *,
        ef_search: int | None = None, threads: int = 1, exact_rows: int = EXACT_MAX_ROWS,
        splitter: Callable[[], Splitter] | None = None) -> list[list[Hit]]:
    """Run the pipeline for ``req`` inside one read transaction.

    ``encoder`` is called only when a backlog document has no stored vector yet.
    A filter is evaluated first, in the same snapshot (its matches cached by change-log
    position, see :class:`~retrieval.store.repository.MatchCache`); every stage then sees
    only the documents it allows.
    """
    check_mode(req.mode, req.alpha)
    set_search_threads(threads)
    nq = req.queries
    with store.read() as snap:
        max_seq = snap.max_seq()
        if version is not None:
            diverged = follows(snap, version.manifest, max_seq=max_seq, identity=False)
            if diverged is not None:  # never serve vectors of another history (the caller rebuilds)
                raise IndexDivergedError(diverged)
        allowed = snap.matching_ids(req.where, max_seq=max_seq) if req.where is not None else None
        if allowed is not None and not len(allowed):
            return [[] for _ in range(nq)]
        depth = req.k if req.mode != "hybrid" else max(req.k, req.depth)
        dense: list[list[tuple[float, int]]] = []
        rows: list[dict[int, int]] | None = None
        if req.mode != "keyword":
            assert version is not None
            pending = backlog(snap, version, max_seq=max_seq)
            dense, rows = _dense_ranked(store, version, encoder, req, pending, allowed, depth, ef_search, exact_rows,
                                        splitter)
        locate = locate_passages(encoder, splitter) if splitter is not None else None
        key = version.manifest.splitter if version is not None else ""
        if req.mode == "dense":
            return fetch_hits(snap, [_cut(r, req.min_score) for r in dense], passages=locate, rows=rows,
                              splitter_key=key)
        keyword = _keyword_ranked(snap, req, depth)
        assert req.texts is not None
        if req.mode == "keyword":
            ranked = [_cut([(s, i) for s, i, _ in r], req.min_score) for r in keyword]
            extra = _with_snippets(snap, req, ranked, [{} for _ in ranked])
            return fetch_hits(snap, ranked, extra=extra, mode="keyword")
        fused = [_fuse(d, kw, req.k, req.alpha) for d, kw in zip(dense, keyword)]
        ranked = [_cut(r, req.min_score) for r, _ in fused]
        extra = _with_snippets(snap, req, ranked, [e for _, e in fused])
        return fetch_hits(snap, ranked, extra=extra, mode="hybrid", passages=locate, rows=rows, splitter_key=key)


def search(store: Store, version: IndexVersion, encoder: Callable[[], Encoder], vectors: np.ndarray, k: int, *,
           min_score: float | None = None, ef_search: int | None = None, threads: int = 1) -> list[list[Hit]]:
    """Dense search for query ``vectors`` (one row per query) against ``version``."""
    return run(store, version, encoder, Request(k, vectors=vectors, min_score=min_score), ef_search=ef_search,
               threads=threads)


__all__ = ["MODES", "Backlog", "check_mode", "Candidates", "Request", "backlog", "dense_candidates", "exact_candidates",
           "fetch_hits", "merge", "run", "search"]
