"""Building a segment's FAISS index: exact (flat) or HNSW, and the recall guard that
measures an HNSW graph against exact search when it is built and raises efSearch until
it reaches ``min_recall`` (or keeps the segment exact)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.config import IndexSettings
from retrieval.index import faisslib

log = logging.getLogger("retrieval.index")

RECALL_K = 10


@dataclass(frozen=True)
class BuildOptions:
    """How new segments are built: their type by size, HNSW parameters and the recall guard."""

    index_type: str = "auto"  # auto | flat | hnsw
    hnsw_min_docs: int = 20_000  # auto: segments at least this large are HNSW
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128  # where the recall guard starts
    max_ef_search: int = 1024
    min_recall: float = 0.98
    recall_queries: int = 200
    threads: int | None = None  # OpenMP threads of this thread's builds (None: FAISS's default)
    # How documents become rows (retrieval.sync.passages.Splitter): tokens per passage
    # (None: the model's window; 0: one row per document) and their overlap.
    chunk_tokens: int | None = None
    chunk_overlap: int = 0

    @classmethod
    def of(cls, index: IndexSettings, *, threads: int | None = None) -> BuildOptions:
        """How a store with these index settings builds its segments."""
        return cls(index_type=index.type, hnsw_min_docs=index.hnsw_min_docs, hnsw_m=index.hnsw_m,
                   ef_construction=index.hnsw_ef_construction, ef_search=index.hnsw_ef_search,
                   min_recall=index.min_recall, threads=threads, chunk_tokens=index.chunk_tokens,
                   chunk_overlap=index.chunk_overlap)

    def kind_for(self, rows: int) -> str:
        if self.index_type == "flat":
            return "flat"
        if self.index_type == "hnsw":
            return "hnsw"
        return "hnsw" if rows >= self.hnsw_min_docs else "flat"


@dataclass
class BuiltIndex:
    kind: str
    index: Any
    ef_search: int | None = None
    recall: float | None = None
    exact_by_guard: bool = False
    recall_curve: dict[int, float] = field(default_factory=dict)


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact score per query (the bar an approximate hit must reach)."""
    best = np.full((len(queries), 0), -np.inf, np.float32)
    for start in range(0, len(vectors), 65_536):
        best = np.concatenate([best, queries @ vectors[start:start + 65_536].T], axis=1)
        if best.shape[1] > k:
            best = -np.partition(-best, k - 1, axis=1)[:, :k]
    kk = min(k, best.shape[1])
    if not kk:
        return np.full(len(queries), np.inf, np.float32)
    return -np.partition(-best, kk - 1, axis=1)[:, kk - 1]


def measure_recall(index: Any, vectors: np.ndarray, ef: int, queries: np.ndarray, kth: np.ndarray, k: int) -> float:
    """recall@k of ``index`` at efSearch ``ef``: the share of its hits scoring at least the
    exact k-th score (ties count as found)."""
    faiss = faisslib.load()
    scores, rows = index.search(queries, k, params=faiss.SearchParametersHNSW(efSearch=int(ef)))
    kk = min(k, len(vectors))
    good = (rows >= 0) & (scores >= kth[:, None] - 1e-5)
    return float(good.sum() / (len(queries) * kk))


def recall_queries(x: np.ndarray, n: int) -> np.ndarray:
    """Queries for the recall guard: normalised midpoints of random pairs of the segment's
    own vectors. A vector of the segment itself is an easy query (the graph holds it: on
    isotropic vectors self-queries overstated recall@20 by 0.05); a midpoint lies between
    documents, where real queries do."""
    if not len(x):
        return x
    rng = np.random.default_rng(len(x))
    a, b = rng.integers(0, len(x), size=(2, n))
    q = x[a] + x[b]
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return np.ascontiguousarray(q / np.where(norms > 0, norms, 1), dtype=np.float32)


def build_faiss(vectors: np.ndarray, opts: BuildOptions, kind: str) -> BuiltIndex:
    """A FAISS index over ``vectors`` (rows are positions). HNSW passes the recall guard:
    efSearch rises from ``opts.ef_search`` until recall@10 on a sample of the segment's own
    vectors reaches ``opts.min_recall``; when no efSearch up to ``max_ef_search`` does, the
    segment is kept exact."""
    faiss = faisslib.load()
    if opts.threads is not None:
        faiss.omp_set_num_threads(opts.threads)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    d = x.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index.add(x)
        return BuiltIndex("flat", index)
    index = faiss.IndexHNSWFlat(d, opts.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = max(100, opts.ef_construction)
    index.add(x)
    n = len(x)
    sample = recall_queries(x, opts.recall_queries)
    kth = exact_top(x, sample, RECALL_K)
    curve: dict[int, float] = {}
    ef = max(1, opts.ef_search)
    # The guard aims at half the misses min_recall allows: its sample queries are easier
    # than real ones (on hash-384 Cranfield, 0.988 on the sample was 0.972 on the queries).
    target = 1 - (1 - opts.min_recall) / 2
    while True:
        recall = measure_recall(index, x, ef, sample, kth, RECALL_K) if n else 1.0
        curve[ef] = round(recall, 4)
        if recall >= target:
            index.hnsw.efSearch = ef
            return BuiltIndex("hnsw", index, ef_search=ef, recall=round(recall, 4), recall_curve=curve)
        if ef >= opts.max_ef_search:
            break
        ef = min(opts.max_ef_search, ef * 2)
    log.warning("an HNSW segment of %d vectors reached recall@10 %.3f at most (efSearch up to %d, target %.3f); "
                "keeping it exact", n, max(curve.values()), opts.max_ef_search, target)
    flat = build_faiss(x, opts, "flat")
    flat.exact_by_guard, flat.recall_curve, flat.recall = True, curve, 1.0
    return flat
