"""Compressed segments: 8-bit codes in memory, float vectors on disk, exact scores.

A large segment holds each row as an 8-bit scalar-quantised code (1 byte a dimension: a
quarter of the float vector), searched by one of two structures:

* ``hnsw_sq`` (the default from 20,000 rows): an HNSW graph over the codes (FAISS's
  ``IndexHNSWSQ``), about 700 bytes a row at 384 dimensions and M 32;
* ``ivf``: an inverted file over the codes (``IndexIVFScalarQuantizer``), about 392 bytes
  a row. On all-MiniLM-L6-v2 vectors of short texts it needs a quarter of its lists
  probed to reach recall@10 0.98, so it is slower than the graph (see docs/scaling.md);
  ``index.type: ivf`` builds it where memory matters more than latency.

A search takes the ``rescore`` best candidates by their codes (per 10 results) and
re-scores each exactly from the segment's float vectors, kept in a file of their own
(``<segment>.vec``, raw float32 in row order) and read with ``pread``: only the
candidates' rows are read. So scores are exact inner products, comparable across segments of every
kind, and no result is ever a code's estimate.

Building streams: the rows come from a :class:`RowSource` in blocks, are written to the
vector file once, and the index is trained on a sample and filled in blocks read back
from it. Memory holds the codes (and graph) being built, the training sample and a few
blocks, whatever the input: :func:`max_rows` turns the merge memory budget into the
largest segment a build may make, and the merge policy keeps to it.

The recall guard picks the search breadth (efSearch, or the lists probed) and
``rescore`` as it picks an HNSW segment's efSearch: the cheapest pair whose recall@10
on the calibration queries reaches the target.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from retrieval.index import faisslib

BLOCK_ROWS = 8192  # rows a build reads, encodes or scores at once
GUARD_CHUNK = 64  # queries the guard re-scores at once
RESCORE_STEPS = (10, 20, 40, 80, 160, 320)  # candidates re-scored per 10 results
MAX_LISTS = 16_384
# What a search costs, relative to scanning one code: re-scoring a candidate reads its
# float vector (4 bytes a dimension, a random page) and takes an exact inner product.
RESCORE_COST = 8.0
CENTROID_COST = 1.0


class RowSource(Protocol):
    """Rows to build a segment from: ascending ids and their float vectors, in blocks."""

    @property
    def rows(self) -> int: ...

    @property
    def dim(self) -> int: ...

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        """The vectors of every row in order, ``size`` rows at a time (float32, C order)."""
        ...


@dataclass
class ArraySource:
    """Rows already in memory (a sync's new rows, a full build's page)."""

    vectors: np.ndarray

    @property
    def rows(self) -> int:
        return len(self.vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, size):
            yield np.ascontiguousarray(self.vectors[start:start + size], dtype=np.float32)


class VectorFile:
    """A segment's float vectors file (raw float32, ``rows`` x ``dim``, from ``offset``),
    read with ``pread`` in blocks (a build, a merge) or row by row (a search's candidates):
    the page cache holds them, not this process. :attr:`mapped` maps the whole file, for
    the few callers that want every vector (``verify``, ``eval --compare-exact``)."""

    def __init__(self, path: Path, rows: int, dim: int, offset: int = 0) -> None:
        self.path, self._rows, self._dim, self._offset = Path(path), rows, dim, offset
        self._map: np.ndarray | None = None
        self._handle: Any = None

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def dim(self) -> int:
        return self._dim

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows ``start`` to ``start + count`` (a read, not a mapping)."""
        count = max(0, min(count, self._rows - start))
        row_bytes = self._dim * 4
        data = os.pread(self._fd(), count * row_bytes, self._offset + start * row_bytes)
        if len(data) != count * row_bytes:
            raise OSError(f"{self.path.name} ends early ({len(data) // max(row_bytes, 1)} of {count} rows read)")
        return np.frombuffer(data, dtype="<f4").reshape(count, self._dim).copy()

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self._rows, size):
            yield self.read(start, size)

    @property
    def mapped(self) -> np.ndarray:
        if self._map is None:
            if self._rows == 0:
                self._map = np.empty((0, self._dim), np.float32)
            else:
                self._map = np.memmap(self.path, dtype="<f4", mode="r", offset=self._offset,
                                      shape=(self._rows, self._dim))
        return self._map

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (any order), read with ``pread``, not through a mapping:
        the page cache holds them, and the process's RSS does not grow (a mapping's reads
        stay in RSS, and with the page cache's large folios one row's read maps up to
        about 100 KB: a server re-scoring 20 candidates a query mapped the whole file within
        a few hundred queries). Rows within 16 of each other are read in one call."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.empty((0, self._dim), np.float32)
        wanted, back = np.unique(rows, return_inverse=True)
        out = np.empty((len(wanted), self._dim), np.float32)
        row_bytes = self._dim * 4
        breaks = np.flatnonzero(np.diff(wanted) > 16) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(wanted)]))
        fd = self._fd()
        for a, b in zip(starts.tolist(), ends.tolist()):
            first, last = int(wanted[a]), int(wanted[b - 1])
            data = os.pread(fd, (last - first + 1) * row_bytes, self._offset + first * row_bytes)
            if len(data) != (last - first + 1) * row_bytes:
                raise OSError(f"{self.path.name} ends early (row {last} of {self._rows})")
            span = np.frombuffer(data, dtype="<f4").reshape(-1, self._dim)
            out[a:b] = span[wanted[a:b] - first]
        return out[back.ravel()]

    def _fd(self) -> int:
        if self._handle is None:
            self._handle = open(self.path, "rb")
        return self._handle.fileno()


def write_vectors(source: RowSource, path: Path) -> None:
    """Write every row of ``source`` to ``path`` as raw float32, block by block."""
    with open(path, "wb") as fh:
        for block in source.blocks(BLOCK_ROWS):
            fh.write(np.ascontiguousarray(block, dtype="<f4").tobytes())


def lists_for(rows: int) -> int:
    """IVF lists for a segment of ``rows``: about 2 x sqrt(rows), a power of two (so about
    sqrt(rows) / 2 rows a list), at least 39 training rows a list (one list for a tiny
    segment: its codes are scanned in full)."""
    target = 2 * math.sqrt(max(rows, 1))
    n = 1 << max(0, round(math.log2(target)))
    while n > 1 and rows < 39 * n:
        n //= 2
    return int(min(MAX_LISTS, n))


def train_rows(rows: int, nlist: int, dim: int, budget_bytes: int) -> int:
    """Rows the coarse quantizer and the scalar quantizer are trained on: 64 a list at most,
    and at most an eighth of the memory budget."""
    return int(max(min(rows, 39 * nlist), min(rows, 64 * nlist, budget_bytes // 8 // (dim * 4))))


def max_rows(kind: str, dim: int, budget_bytes: int, hnsw_m: int = 32) -> int:
    """The largest segment of ``kind`` a build may make within ``budget_bytes``: what it
    holds a row (IVF: its code and list id; HNSW over codes: the code and graph links;
    HNSW: the float vector and graph links; flat: the float vector), beside the training
    sample and the blocks in flight."""
    links = int(hnsw_m * 2 * 4 * 1.1) + 8  # level 0 holds 2M links; the levels above about a tenth more
    per_row = {"ivf": dim + 8, "hnsw_sq": dim + links, "hnsw": dim * 4 + links,
               "flat": dim * 4}[kind] + 32  # + id, input, position, order
    fixed = 3 * BLOCK_ROWS * dim * 4 + budget_bytes // 8
    return max(1, (budget_bytes - fixed) // per_row)


def sample_rows(source: RowSource, n: int, seed: int) -> np.ndarray:
    """About ``n`` rows spread evenly through ``source`` (one pass over its blocks)."""
    total = source.rows
    if n >= total:
        return np.concatenate(list(source.blocks(BLOCK_ROWS))) if total else np.empty((0, source.dim), np.float32)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(total, size=n, replace=False))
    parts, start = [], 0
    for block in source.blocks(BLOCK_ROWS):
        lo, hi = np.searchsorted(chosen, [start, start + len(block)])
        if hi > lo:
            parts.append(block[chosen[lo:hi] - start])
        start += len(block)
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def exact_kth(source: RowSource, queries: np.ndarray, k: int) -> np.ndarray:
    """Each query's exact ``k``-th best score over ``source``, streamed in blocks."""
    nq = len(queries)
    best = np.full((nq, 0), -np.inf, np.float32)
    for block in source.blocks(BLOCK_ROWS):
        best = np.concatenate([best, queries @ block.T], axis=1)
        if best.shape[1] > k:
            best = -np.partition(-best, k - 1, axis=1)[:, :k]
    kk = min(k, best.shape[1])
    if not kk:
        return np.full(nq, np.inf, np.float32)
    return -np.partition(-best, kk - 1, axis=1)[:, kk - 1]


@dataclass
class Guarded:
    breadth: int | None  # lists probed (IVF) or efSearch (graph)
    rescore: int | None  # candidates re-scored per 10 results
    recall: float | None
    curve: dict[str, float]


def build(kind: str, vectors: VectorFile, *, budget_bytes: int, hnsw_m: int = 32, ef_construction: int = 100,
          threads: int | None = None, seed: int = 0) -> Any:
    """A ``kind`` (``ivf`` or ``hnsw_sq``) index over the rows of ``vectors`` (row ids are
    positions): trained on a sample, then filled a block at a time."""
    faiss = faisslib.load()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    n, d = vectors.rows, vectors.dim
    if kind == "ivf":
        nlist = lists_for(n)
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.own_fields = True
        quantizer.this.disown()
        index.cp.seed = seed
        sample = train_rows(n, nlist, d, budget_bytes)
    else:
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(100, ef_construction)
        sample = min(n, max(10_000, budget_bytes // 8 // (d * 4)))
    index.train(sample_rows(vectors, sample, seed))
    for block in vectors.blocks(BLOCK_ROWS):
        index.add(block)
    return index


def ef_steps(start: int, max_ef: int) -> list[int]:
    """The efSearch values a recall guard tries: from ``start``, 1.5x a step (at least one
    more), up to ``max_ef``."""
    out = [max(1, min(start, max_ef))]
    while out[-1] < max_ef:
        out.append(min(max_ef, max(out[-1] + 1, int(out[-1] * 1.5))))
    return out


def breadths(index: Any, kind: str, start: int, max_ef: int) -> list[int]:
    """The search breadths the guard tries, narrowest first: lists probed (IVF, doubling up
    to every list) or efSearch (graph: :func:`ef_steps`)."""
    if kind == "ivf":
        nlist = int(index.nlist)
        out = [1]
        while out[-1] < nlist:
            out.append(min(nlist, out[-1] * 2))
        return out
    return ef_steps(start, max_ef)


def candidates(index: Any, kind: str, queries: np.ndarray, depth: int, breadth: int, sel: Any = None) -> np.ndarray:
    """Rows of the ``depth`` best candidates by code per query (-1 padded), searching
    ``breadth`` wide (lists probed, or efSearch: at least ``depth``)."""
    faiss = faisslib.load()
    if kind == "ivf":
        params = faiss.SearchParametersIVF(nprobe=int(breadth))
    else:
        params = faiss.SearchParametersHNSW(efSearch=int(max(breadth, depth)))
    if sel is not None:
        params.sel = sel
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(depth), params=params)
    return np.asarray(rows)


def rescored(vectors: VectorFile, queries: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of each query's candidate ``rows`` by exact inner product: (scores,
    rows), best first, ties by row, padded with -inf and -1."""
    nq, depth = rows.shape
    found = rows >= 0
    vecs = vectors.take(np.where(found, rows, 0).ravel()).reshape(nq, depth, vectors.dim)
    scores = np.einsum("qcd,qd->qc", vecs, queries, dtype=np.float32, casting="same_kind")
    scores = np.where(found, scores, -np.inf).astype(np.float32)
    keyed = np.where(found, rows, np.iinfo(np.int64).max)
    order = np.lexsort((keyed, -scores), axis=1)[:, :k]
    top_s, top_r = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return top_s, np.where(np.isfinite(top_s), top_r, -1)


def depth_for(rescore: int, k: int, recall_k: int = 10) -> int:
    """Candidates re-scored for ``k`` results, at a guard's ``rescore`` per ``recall_k``."""
    return max(k, int(math.ceil(rescore * max(k, recall_k) / recall_k)))


def guard(index: Any, kind: str, vectors: VectorFile, queries: np.ndarray, kth: np.ndarray, *, target: float,
          start: int = 16, max_ef: int = 1024, recall_k: int = 10) -> Guarded:
    """The cheapest (breadth, rescore) whose recall@``recall_k`` on ``queries`` reaches
    ``target``. ``kth``: each query's exact k-th best score; a re-scored candidate scoring
    at least that is found (ties count as found). Cost: for IVF, the centroids, the codes
    in the lists probed and RESCORE_COST per re-scored candidate; for a graph, its
    efSearch (at least the candidates asked for) and a fifth of a step per candidate.
    breadth None: no pair reached the target."""
    per_list = index.ntotal / max(int(getattr(index, "nlist", 1)), 1)
    curve: dict[str, float] = {}
    best: tuple[float, int, int, float] | None = None
    nq = len(queries)

    def cost(breadth: int, rescore: int) -> float:
        if kind == "ivf":
            return float(index.nlist) * CENTROID_COST + breadth * per_list + RESCORE_COST * rescore
        return max(breadth, rescore) + 0.2 * rescore

    def recall_at(breadth: int, rescore: int) -> float:
        rows = candidates(index, kind, queries, rescore, breadth)
        hits = 0
        for start in range(0, nq, GUARD_CHUNK):  # a chunk's candidates' vectors at a time
            part = rows[start:start + GUARD_CHUNK]
            found = part >= 0
            q = queries[start:start + GUARD_CHUNK]
            scores = np.einsum("qcd,qd->qc", vectors.take(np.where(found, part, 0).ravel()).reshape(
                len(part), rescore, -1), q, dtype=np.float32, casting="same_kind")
            good = found & (scores >= kth[start:start + GUARD_CHUNK, None] - 1e-5)
            hits += int(np.minimum(good.sum(axis=1), recall_k).sum())
        recall = hits / (nq * recall_k)
        curve[f"{breadth}/{rescore}"] = round(recall, 4)
        return recall

    for breadth in breadths(index, kind, start, max_ef):
        if best is not None and cost(breadth, RESCORE_STEPS[0]) > best[0]:
            break
        # The deepest re-scoring first: a breadth where even that misses is passed over
        # at the price of one measurement (isotropic vectors miss at every breadth).
        if recall_at(breadth, RESCORE_STEPS[-1]) < target:
            continue
        for rescore in RESCORE_STEPS:
            if best is not None and cost(breadth, rescore) >= best[0]:
                break
            key = f"{breadth}/{rescore}"
            recall = curve[key] if key in curve else recall_at(breadth, rescore)
            if recall >= target:
                best = (cost(breadth, rescore), breadth, rescore, recall)
                break
    if best is None:
        return Guarded(None, None, max(curve.values(), default=0.0), curve)
    return Guarded(best[1], best[2], round(best[3], 4), curve)
