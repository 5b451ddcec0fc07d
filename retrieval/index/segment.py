"""Open segments and their search: a segment's FAISS index (memory-mapped) and row ids,
as one generation sees them (its dead rows), and :class:`IndexVersion`, what a search
searches: every live segment inside FAISS with a bitmap selector, merged best first."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.index import faisslib
from retrieval.index.compressed import VectorFile, candidates, depth_for, rescored
from retrieval.index.manifest import Manifest, SegmentMeta
from retrieval.index.rows import docs_of, rows_of_documents


class OpenSegment:
    """A segment's FAISS index (memory-mapped), row ids and, for a compressed segment, its
    float vectors file; immutable, shared by generations."""

    def __init__(self, meta: SegmentMeta, index: Any, ids: np.ndarray, vector_file: VectorFile | None = None,
                 path: Path | None = None) -> None:
        self.name = meta.name
        self.meta = meta
        self.index = index
        self.ids = ids
        self.vector_file = vector_file
        self.path = path  # the FAISS file (flat and HNSW: its float vectors are its last bytes)

    @property
    def rows(self) -> int:
        return len(self.ids)

    def rows_of(self, doc_ids: np.ndarray) -> np.ndarray:
        """Rows holding any of ``doc_ids`` (ids are sorted, so no hash set is built)."""
        if not len(doc_ids) or not self.rows:
            return np.empty(0, np.int64)
        pos = np.searchsorted(self.ids, doc_ids)
        inside = pos < self.rows
        pos, wanted = pos[inside], doc_ids[inside]
        return pos[self.ids[pos] == wanted].astype(np.int64, copy=False)

    def rows_of_documents(self, doc_ids: np.ndarray, bits: int) -> np.ndarray:
        """Rows holding any passage of ``doc_ids`` (``bits``: the manifest's passage bits)."""
        return rows_of_documents(self.ids, doc_ids, bits)

    def vectors(self) -> np.ndarray:
        """The float vectors of every row (of a compressed segment: its file, mapped)."""
        if not self.rows:
            return np.empty((0, self.index.d), np.float32)
        if self.vector_file is not None:
            return self.vector_file.mapped
        return self.index.reconstruct_n(0, self.rows)

    def vectors_of(self, rows: np.ndarray) -> np.ndarray:
        """The float vectors of ``rows``."""
        if self.vector_file is not None:
            return self.vector_file.take(rows)
        return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64))

    def read_rows(self, start: int, count: int) -> np.ndarray:
        """The float vectors of rows ``start`` to ``start + count``, read for a merge with plain
        reads (the page cache holds them, not this process)."""
        if self.vector_file is not None:
            return self.vector_file.read(start, count)
        count = max(0, min(count, self.rows - start))
        if not count:
            return np.empty((0, self.index.d), np.float32)
        if self.path is not None:
            # A flat or HNSW file ends with its float vectors (the flat storage is written
            # last): read them there rather than page the mapping into this process.
            d = int(self.index.d)
            return VectorFile(self.path, self.rows, d, offset=self.meta.faiss.bytes - self.rows * d * 4).read(start, count)
        return self.index.reconstruct_n(start, count)


def bits(dead: np.ndarray) -> np.ndarray:
    return np.packbits(dead.astype(bool), bitorder="little")


def unbits(packed: np.ndarray, rows: int) -> np.ndarray:
    return np.unpackbits(packed, count=rows, bitorder="little").astype(bool)


@dataclass
class SegmentView:
    """A segment as one generation sees it: the open segment and that generation's dead rows."""

    segment: OpenSegment
    meta: SegmentMeta
    dead: np.ndarray  # bool per row
    allowed: np.ndarray | None = None  # packed bitmap of live rows; None when none is dead

    @property
    def live(self) -> int:
        return self.meta.live


def _selector_params(faiss: Any, kind: str, bitmap: np.ndarray | None, rows: int, ef: int | None) -> tuple[Any, Any]:
    sel = faiss.IDSelectorBitmap(rows, faiss.swig_ptr(bitmap)) if bitmap is not None else None
    if kind == "hnsw":
        params = faiss.SearchParametersHNSW(efSearch=int(ef or 16))
        if sel is not None:
            params.sel = sel
        return params, sel
    if sel is None:
        return None, None
    return faiss.SearchParameters(sel=sel), sel


# An HNSW segment scores a filter's matches exactly up to this many of its rows: reading
# and scoring 8,192 vectors takes about as long as a filtered graph search at the
# selectivity where the graph starts to need a wide efSearch (see scripts/bench_filters.py).
EXACT_MAX_ROWS = 8192
WIDEN_STEPS = 4  # efSearch x4 each time; then the allowed rows are scored exactly
FIRST_WIDTH = 4  # search_documents: rows asked for first, per document wanted


class IndexVersion:
    """One manifest generation, opened: what a search searches."""

    def __init__(self, manifest: Manifest, views: list[SegmentView]) -> None:
        self.manifest = manifest
        self.views = views

    @property
    def count(self) -> int:
        """Live rows (passages; documents in an index without passage bits)."""
        return self.manifest.count

    @property
    def bits(self) -> int:
        return self.manifest.passage_bits

    @property
    def ids(self) -> np.ndarray:
        """Every live row id, segment by segment (see :mod:`retrieval.index.rows`)."""
        parts = [v.segment.ids[~v.dead] for v in self.views]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def vectors(self) -> np.ndarray:
        """The live vectors, in the order of :attr:`ids`."""
        parts = [v.segment.vectors()[~v.dead] for v in self.views]
        return np.concatenate(parts) if parts else np.empty((0, self.manifest.dim), np.float32)

    def search(self, vectors: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
               allow: np.ndarray | None = None, ef_search: int | None = None,
               exact_max: int = EXACT_MAX_ROWS) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, row ids) per query row over every segment, best first, ties by
        row id, padded with id -1. ``exclude`` and ``allow`` name documents: every passage
        row of theirs is excluded or allowed.

        Each segment is searched with a bitmap selector of its live rows, less the rows of
        ``exclude`` documents (changed since this generation), inside FAISS; an HNSW
        segment uses the efSearch its recall guard recorded (at least ``ef_search``).

        ``allow`` (sorted ids, a filter's matches) restricts the search to those documents,
        and the plan follows how many of a segment's rows they are: a flat segment is
        searched with a selector of them (exact); in an HNSW segment up to ``exact_max`` of
        them are scored exactly from their vectors, and more through the graph with a
        selector, efSearch widened until every query has min(k, allowed) results.
        """
        faiss = faisslib.load()
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        nq = len(q)
        excl = np.unique(np.asarray(exclude, dtype=np.int64)) if exclude is not None and len(exclude) else None
        if allow is not None and excl is not None:
            allow = np.setdiff1d(allow, excl, assume_unique=True)
        all_scores, all_ids = [], []
        for view in self.views:
            if nq == 0:
                break
            seg = view.segment
            ef = view.meta.ef_search
            if ef is not None and ef_search is not None:
                ef = max(ef, ef_search)
            if allow is not None:
                rows = seg.rows_of_documents(allow, self.bits)
                if len(rows):
                    rows = rows[~view.dead[rows]]
                if not len(rows):
                    continue
                if view.meta.kind != "flat" and len(rows) <= exact_max:
                    scores, ids = _exact_rows(seg, rows, q, k)
                else:
                    mask = np.zeros(seg.rows, bool)
                    mask[rows] = True
                    chosen = np.packbits(mask, bitorder="little")
                    search = _compressed_search if seg.vector_file is not None else _search_widening
                    scores, ids = search(faiss, view, q, min(k, len(rows)), chosen, ef, rows)
                all_scores.append(scores)
                all_ids.append(ids)
                continue
            bitmap = view.allowed
            live = view.live
            if excl is not None:
                rows = seg.rows_of_documents(excl, self.bits)
                if len(rows):
                    rows = rows[~view.dead[rows]]
                if len(rows):
                    bitmap = (bitmap if bitmap is not None else np.full((seg.rows + 7) // 8, 0xFF, np.uint8)).copy()
                    np.bitwise_and.at(bitmap, rows >> 3, ~np.left_shift(1, rows & 7).astype(np.uint8))
                    live -= len(rows)
            n = min(k, live)
            if n <= 0:
                continue
            if seg.vector_file is not None:
                scores, ids = _compressed_search(faiss, view, q, n, bitmap, ef, None)
                all_scores.append(scores)
                all_ids.append(ids)
                continue
            # A graph search keeps efSearch candidates: at least the n results asked for.
            params, _sel = _selector_params(faiss, view.meta.kind, bitmap, seg.rows, max(int(ef or 16), n))
            scores, rows_found = seg.index.search(q, n, params=params)
            all_scores.append(scores)
            all_ids.append(_ids_of(seg, rows_found))
        if not all_scores:
            return np.empty((nq, 0), np.float32), np.empty((nq, 0), np.int64)
        scores = np.concatenate(all_scores, axis=1)
        ids = np.concatenate(all_ids, axis=1)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        order = np.lexsort((ids, -scores), axis=1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


    def search_documents(self, vectors: np.ndarray, k: int, **kwargs: Any
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The top-``k`` documents per query, each scored by its best passage: (scores,
        document ids, the best passage's row ids), best first, padded with -1.

        Takes :meth:`search`'s arguments. When one document's passages fill the top rows,
        the row search (first ``FIRST_WIDTH`` x k rows) is widened (x4 each time, up to
        every live row) until every query has min(k, matching documents) distinct documents. In an index without passage
        bits a row is a document, and this is :meth:`search`."""
        if not self.bits:
            scores, rows = self.search(vectors, k, **kwargs)
            return scores, rows, rows
        q = np.ascontiguousarray(vectors, dtype=np.float32)
        nq = len(q)
        out_scores = np.full((nq, k), -np.inf, np.float32)
        out_docs = np.full((nq, k), -1, np.int64)
        out_rows = np.full((nq, k), -1, np.int64)
        width = {qi: 0 for qi in range(nq)}
        pending = np.arange(nq)
        # A first search of k rows often finds fewer than k documents (the passages of a
        # document are near each other, so a query near one finds several): start wider.
        # Few more rows cost a flat scan or an HNSW search (efSearch is larger) nothing.
        total = self.count
        want = min(total, k * FIRST_WIDTH)
        while len(pending):
            scores, rows = self.search(q[pending], want, **kwargs)
            unfinished = []
            for j, qi in enumerate(pending.tolist()):
                found = rows[j] >= 0
                docs = docs_of(rows[j][found], self.bits)
                # Rows come best first (ties by row id), so a document's first row is its best.
                _, first = np.unique(docs, return_index=True)
                first.sort()
                n = min(k, len(first))
                out_scores[qi, :n] = scores[j][found][first[:n]]
                out_docs[qi, :n] = docs[first[:n]]
                out_rows[qi, :n] = rows[j][found][first[:n]]
                width[qi] = n
                if n < k and int(found.sum()) >= want and want < total:
                    unfinished.append(qi)
            pending = np.asarray(unfinished, dtype=np.int64)
            want = min(want * 4, total)
        width_max = max(width.values(), default=0)
        return out_scores[:, :width_max], out_docs[:, :width_max], out_rows[:, :width_max]


def _ids_of(seg: OpenSegment, rows_found: np.ndarray) -> np.ndarray:
    found = rows_found >= 0
    return np.where(found, seg.ids[np.where(found, rows_found, 0)], -1)


def _exact_rows(seg: OpenSegment, rows: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of ``rows`` for each query, scored from the segment's stored vectors."""
    vecs = seg.vectors_of(rows)
    scores = np.asarray(q @ vecs.T, dtype=np.float32)
    ids = np.broadcast_to(seg.ids[rows], scores.shape)
    if scores.shape[1] > k:
        # Best first, ties by id: the allow list is small, so a full sort costs nothing.
        top = np.lexsort((ids, -scores), axis=-1)[:, :k]
        return np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return scores, np.ascontiguousarray(ids)


def _search_widening(faiss: Any, view: SegmentView, q: np.ndarray, n: int, bitmap: np.ndarray, ef: int | None,
                     rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A selector search of ``n`` results per query; an HNSW search that finds fewer (the
    filter cut the graph's paths) is widened, and scored exactly as a last resort."""
    seg = view.segment
    # FAISS's HNSW counts only allowed nodes towards efSearch, so the search already goes
    # as much wider as the filter is selective; the recorded efSearch keeps its recall.
    ef = max(int(ef or 16), n)
    for _ in range(WIDEN_STEPS if view.meta.kind == "hnsw" else 1):
        params, _sel = _selector_params(faiss, view.meta.kind, bitmap, seg.rows, ef)
        scores, rows_found = seg.index.search(q, n, params=params)
        if view.meta.kind != "hnsw" or bool((rows_found >= 0).sum(axis=1).min() >= n):
            return scores, _ids_of(seg, rows_found)
        ef *= 4
    return _exact_rows(seg, rows, q, n)


def _compressed_search(faiss: Any, view: SegmentView, q: np.ndarray, n: int, bitmap: np.ndarray | None,
                       ef: int | None, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A compressed segment's top ``n`` (scores, row ids): searched inside FAISS as wide as
    its guard chose (lists probed, or efSearch: at least ``ef``) with a bitmap selector of
    the rows that may be returned, the best candidates by code re-scored exactly from the
    float vectors. A filtered search (``allowed``: the rows it may return) that finds too
    few of them searches 4x wider at a time, and scores the allowed rows exactly at last."""
    seg, meta = view.segment, view.meta
    assert seg.vector_file is not None
    depth = depth_for(int(meta.rescore or 40), n)
    sel = faiss.IDSelectorBitmap(seg.rows, faiss.swig_ptr(bitmap)) if bitmap is not None else None
    if meta.kind == "ivf":
        widest = int(meta.nlist or seg.index.nlist)
        breadth = int(meta.nprobe or widest)
    else:
        breadth = max(int(meta.ef_search or 16), int(ef or 0))
        widest = breadth * 4 ** WIDEN_STEPS
    wanted = depth if allowed is None else min(depth, len(allowed))
    while True:
        rows = candidates(seg.index, meta.kind, q, depth, breadth, sel)
        if allowed is None or bool((rows >= 0).sum(axis=1).min() >= wanted):
            break
        if breadth >= widest:
            return _exact_rows(seg, allowed, q, n)
        breadth = min(widest, breadth * 4)
    scores, best = rescored(seg.vector_file, q, rows, n)
    return scores, _ids_of(seg, best)


def set_search_threads(n: int) -> None:
    """FAISS's OpenMP threads for searches (set for the calling thread). A single query
    gains nothing from a second thread and loses a lot when the cores are busy: measured
    p50 1.6 ms with 1 thread against 104 ms with 2 on a loaded 2-core machine at 20,000
    documents."""
    if getattr(_threads, "n", None) != n:
        faisslib.load().omp_set_num_threads(n)
        _threads.n = n


_threads = threading.local()
