"""Building a segment's FAISS index: exact (flat), HNSW, or compressed (HNSW or IVF over
8-bit codes, :mod:`retrieval.index.compressed`),
and the recall guard that measures an approximate segment against exact search when it
is built and raises its search parameters (efSearch; nprobe and the re-scoring depth)
until it reaches ``min_recall`` (or keeps an HNSW segment exact).

The guard's queries (:class:`Calibration`) are, best first: recent real queries of the
store, vectors of documents outside the segment (held out), or, with neither, midpoints
of the segment's own vectors, which run harder than real queries (so real queries paid
for recall they did not ask for: efSearch 512 where 128 reached 0.989, 4.7x the time, at
100,000 MiniLM vectors) and are held to a stricter target."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.config import IndexSettings
from retrieval.index import faisslib
from retrieval.index.compressed import ArraySource, ef_steps, exact_kth
from retrieval.index.compressed import max_rows as compressed_max_rows

log = logging.getLogger("retrieval.index")

RECALL_K = 10


@dataclass(frozen=True)
class BuildOptions:
    """How new segments are built: their type by size, HNSW parameters and the recall guard."""

    index_type: str = "auto"  # auto | flat | hnsw | hnsw_sq | ivf
    hnsw_min_docs: int = 20_000  # auto: segments at least this large are HNSW
    compressed_min_docs: int = 20_000  # auto: segments at least this large are hnsw_sq
    merge_memory_mb: int = 1024  # what a build may hold beside the serving process
    hnsw_m: int = 32
    ef_construction: int = 100
    ef_search: int = 128  # where the recall guard starts (the setting index.hnsw_ef_search: 16)
    max_ef_search: int = 1024
    min_recall: float = 0.98
    recall_queries: int = 1000
    threads: int | None = None  # OpenMP threads of this thread's builds (None: FAISS's default)
    # How documents become rows (retrieval.sync.passages.Splitter): tokens per passage
    # (None: the model's window; 0: one row per document) and their overlap.
    chunk_tokens: int | None = None
    chunk_overlap: int = 0

    @classmethod
    def of(cls, index: IndexSettings, *, threads: int | None = None) -> BuildOptions:
        """How a store with these index settings builds its segments."""
        return cls(index_type=index.type, hnsw_min_docs=index.hnsw_min_docs, compressed_min_docs=index.compressed_min_docs,
                   merge_memory_mb=index.merge_memory_mb, hnsw_m=index.hnsw_m,
                   ef_construction=index.hnsw_ef_construction, ef_search=index.hnsw_ef_search,
                   min_recall=index.min_recall, threads=threads, chunk_tokens=index.chunk_tokens,
                   chunk_overlap=index.chunk_overlap)

    def kind_for(self, rows: int) -> str:
        if self.index_type != "auto":
            return self.index_type
        if rows >= self.compressed_min_docs:
            return "hnsw_sq"
        return "hnsw" if rows >= self.hnsw_min_docs else "flat"

    @property
    def memory_bytes(self) -> int:
        return self.merge_memory_mb << 20

    def max_rows(self, kind: str, dim: int) -> int:
        """The largest segment of ``kind`` a build may make within ``merge_memory_mb``."""
        return compressed_max_rows(kind, dim, self.memory_bytes, self.hnsw_m)


@dataclass(frozen=True)
class Calibration:
    """The recall guard's queries: ``source`` "queries" (recent real queries of the store)
    or "held-out" (vectors of documents outside the segment)."""

    queries: np.ndarray
    source: str

    @property
    def label(self) -> str:
        return f"{self.source}:{len(self.queries)}"

    def take(self, n: int) -> Calibration:
        return Calibration(np.ascontiguousarray(self.queries[:n], dtype=np.float32), self.source)


def guard_queries(sample: np.ndarray, opts: BuildOptions, calibration: Calibration | None,
                  ) -> tuple[np.ndarray, str, float]:
    """(queries, their label for the manifest, the recall target) of a segment's guard:
    the calibration's, held to ``min_recall`` plus two standard errors of a recall measured
    on that many queries (a sample of 500 catalog queries put one efSearch anywhere from
    0.968 to 0.982: the guard must clear the target with confidence, not by luck; 0.983
    for 1,000 queries at 0.98); or midpoints of ``sample`` (the segment's own vectors),
    held to half the misses ``min_recall`` allows (on hash-384 Cranfield, 0.988 on
    midpoints was 0.972 on the real queries)."""
    if calibration is not None and len(calibration.queries):
        chosen = calibration.take(opts.recall_queries)
        r = opts.min_recall
        error = math.sqrt(r * (1 - r) / (len(chosen.queries) * RECALL_K))
        return chosen.queries, chosen.label, min(1.0, r + 2 * error)
    q = recall_queries(sample, opts.recall_queries)
    return q, f"midpoints:{len(q)}", 1 - (1 - opts.min_recall) / 2


@dataclass
class BuiltIndex:
    kind: str
    index: Any
    ef_search: int | None = None
    recall: float | None = None
    exact_by_guard: bool = False
    recall_curve: dict[int, float] = field(default_factory=dict)
    calibration: str | None = None


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """The k-th best exact score per query (the bar an approximate hit must reach)."""
    return exact_kth(ArraySource(vectors), queries, k)


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


def build_faiss(vectors: np.ndarray, opts: BuildOptions, kind: str, calibration: Calibration | None = None,
                ) -> BuiltIndex:
    """A flat or HNSW FAISS index over ``vectors`` (rows are positions). HNSW passes the
    recall guard: efSearch rises from ``opts.ef_search`` until recall@10 on the guard's
    queries (:func:`guard_queries`) reaches its target; when no efSearch up to
    ``max_ef_search`` does, the segment is kept exact."""
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
    sample, label, target = guard_queries(x, opts, calibration)
    kth = exact_top(x, sample, RECALL_K)
    curve: dict[int, float] = {}
    for ef in ef_steps(opts.ef_search, opts.max_ef_search):
        recall = measure_recall(index, x, ef, sample, kth, RECALL_K) if n else 1.0
        curve[ef] = round(recall, 4)
        if recall >= target:
            index.hnsw.efSearch = ef
            return BuiltIndex("hnsw", index, ef_search=ef, recall=round(recall, 4), recall_curve=curve,
                              calibration=label)
    log.warning("an HNSW segment of %d vectors reached recall@10 %.3f at most (efSearch up to %d, target %.3f); "
                "keeping it exact", n, max(curve.values()), opts.max_ef_search, target)
    flat = build_faiss(x, opts, "flat")
    flat.exact_by_guard, flat.recall_curve, flat.recall, flat.calibration = True, curve, 1.0, label
    return flat
