"""Retrieval quality: trec_eval-compatible metrics, and evaluation of a store on a
test collection (read by :mod:`retrieval.beir`, whose loaders this module passes on).

The metrics follow ``trec_eval`` (and so ``pytrec_eval``, BEIR and ir_measures) exactly,
including its quirks, so numbers here can be compared with published ones:

* a run is ranked by score, highest first, ties broken by document id in *reverse*
  string order (trec_eval's rule), whatever order the retriever returned;
* a document is relevant when its judgement is at least 1; nDCG uses the judgement
  itself as the gain (linear gains, ``log2(rank + 1)`` discount), and the ideal ranking
  is every positive judgement of the query, best first;
* MAP is computed over the whole run (its depth is ``k``), Recall@n and MRR@10 are cut
  at ``n`` and 10; a query without relevant documents scores 0 everywhere;
* means are over the queries that have judgements (queries without any are skipped,
  as trec_eval skips them).

A store can be evaluated in any search mode of :meth:`Retriever.search_many`: ``dense``
(the default), ``keyword`` (BM25 over the FTS5 index) and ``hybrid`` (their fusion);
:func:`evaluate_modes` and :func:`evaluate_dataset_modes` score several modes on one
store, so a BEIR corpus is ingested once for all of them. :func:`write_run` saves a run
in TREC format, for ``trec_eval`` or ``pytrec_eval`` to check.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.beir import BeirDataset, Qrels, Run, join_title, load_beir, load_corpus, load_qrels, load_queries
from retrieval.errors import EvalDataError, RetrievalError
from retrieval.index.rows import docs_of

if TYPE_CHECKING:
    from retrieval.config import Settings
    from retrieval.readers import Record
    from retrieval.retriever import Retriever

__all__ = [
    "METRICS",
    "BeirDataset",
    "Qrels",
    "Run",
    "join_title",
    "EvalDataError",
    "EvalResult",
    "check_modes",
    "evaluate",
    "evaluate_dataset",
    "evaluate_dataset_modes",
    "evaluate_modes",
    "evaluate_run",
    "exact_recall",
    "load_beir",
    "load_corpus",
    "load_qrels",
    "load_queries",
    "query_metrics",
    "results_as_dict",
    "run_path",
    "write_run",
]


# The names users see, in the order they are printed.
METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map")


# -- metrics --------------------------------------------------------------------------


def ranked(run: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval's order: score descending, ties by id descending."""
    return [doc for doc, _ in sorted(run.items(), key=lambda item: (item[1], item[0]), reverse=True)]


def query_metrics(run: Mapping[str, float], judged: Mapping[str, int]) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one query's run (doc id -> score)."""
    order = ranked(run)
    relevant = {doc for doc, grade in judged.items() if grade >= 1}
    n_rel = len(relevant)
    out = dict.fromkeys(METRICS, 0.0)
    if n_rel == 0:
        return out
    # nDCG@10, linear gains as trec_eval's ndcg_cut.
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(rank + 2) for rank, doc in enumerate(order[:10]))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    out["ndcg@10"] = dcg / idcg if idcg > 0 else 0.0
    out["recall@10"] = sum(1 for doc in order[:10] if doc in relevant) / n_rel
    out["recall@100"] = sum(1 for doc in order[:100] if doc in relevant) / n_rel
    for rank, doc in enumerate(order[:10]):
        if doc in relevant:
            out["mrr@10"] = 1.0 / (rank + 1)
            break
    hits = 0
    precision_sum = 0.0
    for rank, doc in enumerate(order):
        if doc in relevant:
            hits += 1
            precision_sum += hits / (rank + 1)
    out["map"] = precision_sum / n_rel
    return out


def evaluate_run(run: Run, qrels: Qrels) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Mean and per-query metrics of ``run`` over the queries of ``qrels``.

    A judged query missing from the run counts as retrieving nothing (0 everywhere);
    run queries without judgements are ignored.
    """
    per_query = {qid: query_metrics(run.get(qid, {}), judged) for qid, judged in qrels.items()}
    n = len(per_query)
    means = {name: (sum(m[name] for m in per_query.values()) / n if n else 0.0) for name in METRICS}
    return means, per_query


# -- runs in TREC format --------------------------------------------------------------


def write_run(path: str | Path, run: Run, tag: str) -> None:
    """Write ``run`` as a TREC run file, ``qid Q0 docid rank score tag`` per line.

    Each query's documents are written in trec_eval's order (score descending, ties by
    id descending), so the rank column agrees with the metrics computed here, and the
    scores exactly (``repr``), so ``trec_eval``/``pytrec_eval`` read back the same run.
    """
    lines: list[str] = []
    for qid, docs in run.items():
        for rank, doc in enumerate(ranked(docs), 1):
            if not qid or not doc or any(ch.isspace() for ch in qid + doc + tag):
                raise RetrievalError(f"cannot write a TREC run: query {qid!r}, document {doc!r} or tag {tag!r} "
                                     "is empty or holds whitespace")
            lines.append(f"{qid} Q0 {doc} {rank} {docs[doc]!r} {tag}\n")
    try:
        Path(path).write_text("".join(lines), encoding="utf-8")
    except OSError as exc:
        raise RetrievalError(f"cannot write the run to {path}: {exc.strerror or exc}") from exc


def run_path(path: str | Path, mode: str, several: bool) -> Path:
    """Where the run of ``mode`` goes: ``path`` itself, or with several modes ``path``
    with ``.<mode>`` before its suffix (``run.trec`` -> ``run.hybrid.trec``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{mode}{path.suffix}") if several else path


# -- evaluating a Retriever -----------------------------------------------------------


@dataclass
class EvalResult:
    """What ``retrieve eval`` reports, for one search mode."""

    metrics: dict[str, float]
    queries: int  # judged queries evaluated
    depth: int  # documents retrieved per query (k)
    search_seconds: float  # wall time of the batched search of every query
    documents: int  # documents in the store
    model: str
    index_type: str
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)
    exact_recall: float | None = None  # recall@depth of the index against exact search
    dataset: str | None = None
    ingest_seconds: float | None = None
    skipped_documents: int = 0
    unjudged_queries: int = 0  # queries in the file without judgements (not evaluated)
    missing_queries: int = 0  # judged query ids with no text in the queries file
    mode: str = "dense"  # the search mode: dense, keyword or hybrid
    alpha: float | None = None  # hybrid: the dense weight of a convex combination (None: RRF)
    fusion_depth: int | None = None  # hybrid: documents taken from each list before fusing
    run: Run = field(default_factory=dict, repr=False)  # query id -> document id -> score

    @property
    def mean_query_ms(self) -> float:
        """Search time per query, with queries encoded and searched in batches."""
        return 1000.0 * self.search_seconds / self.queries if self.queries else 0.0

    @property
    def label(self) -> str:
        """The mode as a column heading: ``dense``, ``keyword``, ``hybrid`` or ``hybrid(alpha=0.7)``."""
        return self.mode if self.alpha is None else f"{self.mode}(alpha={self.alpha:g})"

    @property
    def fusion(self) -> dict[str, Any] | None:
        """How hybrid mode fused the two lists (None in the other modes)."""
        if self.mode != "hybrid":
            return None
        if self.alpha is None:
            from retrieval.search.pipeline import RRF_K

            return {"method": "rrf", "rrf_k": RRF_K, "depth": self.fusion_depth}
        return {"method": "alpha", "alpha": self.alpha, "depth": self.fusion_depth}

    def describe_mode(self) -> str:
        """One line on what the mode searched with."""
        if self.mode == "keyword":
            return "keyword: BM25 over the FTS5 index (SQLite) or ts_rank_cd over the tsvector (PostgreSQL)"
        if self.mode == "hybrid":
            fusion = self.fusion or {}
            how = (f"reciprocal rank fusion (k={fusion['rrf_k']})" if self.alpha is None
                   else f"alpha={self.alpha:g} x dense + {1 - self.alpha:g} x keyword (min-max normalised scores)")
            return f"hybrid: {how} of the dense and keyword top {self.fusion_depth}"
        return "dense: cosine similarity"

    def mode_dict(self) -> dict[str, Any]:
        """The figures that depend on the mode (the per-mode entries of several modes' JSON)."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "mean_query_ms": round(self.mean_query_ms, 3),
            "search_seconds": round(self.search_seconds, 4),
            "exact_recall": None if self.exact_recall is None else round(self.exact_recall, 6),
        }
        if self.mode == "hybrid":
            out["fusion"] = self.fusion
        return out

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metrics": {k: round(v, 6) for k, v in self.metrics.items()},
            "queries": self.queries,
            "depth": self.depth,
            "mean_query_ms": round(self.mean_query_ms, 3),
            "search_seconds": round(self.search_seconds, 4),
            "documents": self.documents,
            "model": self.model,
            "index_type": self.index_type,
            "exact_recall": None if self.exact_recall is None else round(self.exact_recall, 6),
            "unjudged_queries": self.unjudged_queries,
            "missing_queries": self.missing_queries,
            "mode": self.mode,
        }
        if self.mode == "hybrid":
            out["fusion"] = self.fusion
        if self.dataset is not None:
            out.update(
                dataset=self.dataset,
                ingest_seconds=None if self.ingest_seconds is None else round(self.ingest_seconds, 3),
                skipped_documents=self.skipped_documents,
            )
        return out


def results_as_dict(results: Sequence[EvalResult]) -> dict[str, Any]:
    """The JSON of ``retrieve eval``: one mode's :meth:`EvalResult.as_dict`; with several
    modes, the first one's (so readers of one mode's JSON keep working) plus ``modes``,
    each mode's :meth:`EvalResult.mode_dict` by mode name, in the order asked for."""
    if not results:
        raise ValueError("no results")
    out = results[0].as_dict()
    if len(results) > 1:
        out["modes"] = {r.mode: r.mode_dict() for r in results}
    return out


# Queries per search_many call: bounds memory for large query sets while keeping
# encoder batches full.
QUERY_BATCH = 256


def exact_recall(retriever: Retriever, query_vectors: np.ndarray, k: int) -> float:
    """Mean recall@k of the configured index's top-k against exact search.

    Exact search is brute force over the vectors stored in the index itself, so the
    figure isolates what the index structure loses (HNSW's approximation), not
    anything about the model. Ties are counted as FAISS's own evaluation does: a
    returned document whose exact score equals the k-th best exact score is correct.
    """
    version = retriever.current_index()
    n = version.count
    if n == 0 or len(query_vectors) == 0:
        return 1.0
    k = min(k, n)
    vectors = version.vectors()
    ids = version.ids
    position = {int(i): p for p, i in enumerate(ids)}
    q = np.ascontiguousarray(query_vectors, dtype=np.float32)
    _, approx_ids = version.search(q, k)
    exact_scores = q @ vectors.T
    # The k-th best exact score per query; anything scoring at least that is a true top-k.
    kth = -np.partition(-exact_scores, k - 1, axis=1)[:, k - 1]
    total = 0.0
    for qi in range(len(q)):
        got = [position[int(i)] for i in approx_ids[qi] if i >= 0]
        correct = int(np.sum(exact_scores[qi, got] >= kth[qi] - 1e-6)) if got else 0
        total += min(correct, k) / k
    return total / len(q)


def check_modes(modes: Sequence[str], alpha: float | None = None) -> list[str]:
    """``modes`` without repeats, in order, after checking each (and ``alpha``, which
    weighs hybrid mode's fusion and so needs it)."""
    from retrieval.search.pipeline import MODES, check_mode

    out: list[str] = []
    for mode in modes:
        check_mode(mode)
        if mode not in out:
            out.append(mode)
    if not out:
        raise RetrievalError(f"no search mode given; use one or more of {', '.join(MODES)}")
    if alpha is not None:
        check_mode("hybrid", alpha)
        if "hybrid" not in out:
            raise RetrievalError("alpha weighs the fusion of hybrid mode; evaluate the hybrid mode to use it")
    return out


def evaluate(
    retriever: Retriever,
    queries: Mapping[str, str],
    qrels: Qrels,
    k: int = 100,
    compare_exact: bool = False,
    *,
    mode: str = "dense",
    alpha: float | None = None,
) -> EvalResult:
    """Search every judged query with ``retriever`` in ``mode`` and score the run against ``qrels``.

    Queries are searched with :meth:`Retriever.search_many` in batches, and the
    reported latency is the batched search time (encoding included) per query.
    ``alpha`` (hybrid mode only) fuses by a convex combination of normalised scores
    instead of reciprocal rank fusion. ``compare_exact`` measures the dense index, so it
    is left out (None) in keyword mode.
    """
    check_modes([mode], alpha)
    if k < 1:
        raise RetrievalError(f"the depth k must be at least 1, got {k}")
    judged = [qid for qid in qrels if qid in queries]
    if not judged:
        raise EvalDataError(
            "none of the judged query ids appear in the queries file; check that the queries and qrels belong together"
        )
    with retriever.store.read() as snap:
        if snap.max_seq() == 0:
            raise RetrievalError(
                "the store is empty: ingest the collection's corpus first, or use `retrieve eval --dataset DIR`"
            )
        if mode != "dense" and not snap.keyword_available():
            raise RetrievalError(f"{mode} mode needs the keyword index, which this database does not have; "
                                 "open it with this version of retrieval to upgrade its schema")
    version = retriever.current_index()
    k_eff = min(k, retriever.settings.search.max_k)
    texts = [queries[qid] for qid in judged]
    # One untimed query first, so the model's lazy load is not counted as latency.
    retriever.search_many(texts[:1], 1, mode=mode, alpha=alpha, snippets=False)
    run: Run = {}
    t0 = time.perf_counter()
    for start in range(0, len(texts), QUERY_BATCH):
        results = retriever.search_many(texts[start : start + QUERY_BATCH], k_eff, mode=mode, alpha=alpha,
                                          snippets=False)
        for qid, hits in zip(judged[start : start + QUERY_BATCH], results):
            run[qid] = {hit.id: hit.score for hit in hits}
    seconds = time.perf_counter() - t0
    means, per_query = evaluate_run(run, {qid: qrels[qid] for qid in judged})
    fusion_depth = None
    if mode == "hybrid":
        from retrieval.search.pipeline import HYBRID_DEPTH

        fusion_depth = max(k_eff, HYBRID_DEPTH)  # as the pipeline takes it (Request.depth)
    result = EvalResult(
        metrics=means,
        queries=len(judged),
        depth=k_eff,
        search_seconds=seconds,
        documents=int(len(np.unique(docs_of(version.ids, version.bits)))),
        model=retriever.settings.encoder.model,
        index_type=version.manifest.index_type,
        per_query=per_query,
        unjudged_queries=sum(1 for qid in queries if qid not in qrels),
        missing_queries=sum(1 for qid in qrels if qid not in queries),
        mode=mode,
        alpha=alpha if mode == "hybrid" else None,
        fusion_depth=fusion_depth,
        run=run,
    )
    if compare_exact and mode != "keyword":
        result.exact_recall = exact_recall(retriever, retriever.encoder.encode_queries(texts), k_eff)
    return result


def evaluate_modes(
    retriever: Retriever,
    queries: Mapping[str, str],
    qrels: Qrels,
    modes: Sequence[str] = ("dense",),
    *,
    k: int = 100,
    compare_exact: bool = False,
    alpha: float | None = None,
) -> list[EvalResult]:
    """:func:`evaluate` in each of ``modes`` (repeats dropped) on the same store, in order.

    ``alpha`` applies to hybrid mode. The index's recall against exact search, a figure
    of the dense index alone, is measured once and reported with every mode that uses
    it (dense and hybrid).
    """
    modes = check_modes(modes, alpha)
    results: list[EvalResult] = []
    recall: float | None = None
    for mode in modes:
        measure = compare_exact and mode != "keyword" and recall is None
        result = evaluate(retriever, queries, qrels, k=k, compare_exact=measure, mode=mode,
                          alpha=alpha if mode == "hybrid" else None)
        if measure:
            recall = result.exact_recall
        elif compare_exact and mode != "keyword":
            result.exact_recall = recall
        results.append(result)
    return results


def corpus_records(corpus: Mapping[str, str], source: str = "corpus.jsonl") -> list[Record]:
    """Corpus texts as ingestable records (metadata left empty)."""
    from retrieval.readers import Record

    return [Record(doc_id, text, {}, f"{source}:{n}") for n, (doc_id, text) in enumerate(corpus.items(), 1)]


def evaluate_dataset_modes(
    folder: str | Path,
    settings: Settings,
    modes: Sequence[str] = ("dense",),
    *,
    alpha: float | None = None,
    k: int = 100,
    compare_exact: bool = False,
    split: str = "test",
    work_dir: str | Path | None = None,
    on_ingest: Callable[[int, float], None] | None = None,
) -> list[EvalResult]:
    """Ingest a BEIR folder's corpus into a temporary store, once, and evaluate it in each of ``modes``.

    The temporary store (its own SQLite file and index folder) uses every other
    setting of ``settings`` (model, index type, HNSW parameters, batch size) and is
    removed afterwards. Documents with neither title nor text are skipped and
    counted, as ``retrieve ingest --skip-invalid`` would.
    """
    from retrieval.retriever import Retriever

    modes = check_modes(modes, alpha)  # before the ingest, which may take minutes
    data = load_beir(folder, split)
    if not data.corpus:
        raise EvalDataError(f"{Path(folder) / 'corpus.jsonl'} holds no documents with text")
    tmp = Path(tempfile.mkdtemp(prefix="retrieve-eval-", dir=work_dir))
    try:
        store_settings = settings.with_overrides(
            "retrieve eval --dataset",
            database_url=f"sqlite:///{tmp / 'retrieval.db'}",
            index_dir=str(tmp / "index"),
        )
        with Retriever.from_settings(store_settings) as retriever:
            report = retriever.ingest(corpus_records(data.corpus, str(Path(folder) / "corpus.jsonl")))
            if on_ingest is not None:
                on_ingest(report.total, report.seconds)
            results = evaluate_modes(retriever, data.queries, data.qrels, modes, k=k, compare_exact=compare_exact,
                                     alpha=alpha)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for result in results:
        result.dataset = data.name
        result.ingest_seconds = report.seconds
        result.skipped_documents = len(data.empty_documents)
    return results


def evaluate_dataset(
    folder: str | Path,
    settings: Settings,
    *,
    k: int = 100,
    compare_exact: bool = False,
    split: str = "test",
    work_dir: str | Path | None = None,
    on_ingest: Callable[[int, float], None] | None = None,
    mode: str = "dense",
    alpha: float | None = None,
) -> EvalResult:
    """Ingest a BEIR folder's corpus into a temporary store and evaluate it in ``mode``
    (see :func:`evaluate_dataset_modes`, which evaluates several modes on one ingest)."""
    return evaluate_dataset_modes(folder, settings, [mode], alpha=alpha, k=k, compare_exact=compare_exact,
                                  split=split, work_dir=work_dir, on_ingest=on_ingest)[0]


def format_table(results: EvalResult | Sequence[EvalResult]) -> list[str]:
    """The human-readable report: one aligned ``name  value`` line per figure; with
    several modes (results of one store), one column of figures per mode."""
    several = [results] if isinstance(results, EvalResult) else list(results)
    if not several:
        raise ValueError("no results")
    result = several[0]
    rows: list[tuple[str, str]] = []
    if result.dataset is not None:
        skipped = f" ({result.skipped_documents} empty skipped)" if result.skipped_documents else ""
        rows.append(("dataset", f"{result.dataset}: {result.documents} documents{skipped}, "
                                f"ingested in {result.ingest_seconds or 0:.1f}s"))
    else:
        rows.append(("documents", str(result.documents)))
    rows.append(("queries", f"{result.queries} judged" + (f" ({result.missing_queries} judged ids have no query text)"
                                                            if result.missing_queries else "")))
    rows.append(("model", f"{result.model}, {result.index_type} index, depth {result.depth}"))
    if len(several) == 1:
        rows.append(("mode", result.describe_mode()))
        for name in METRICS:
            rows.append((name, f"{result.metrics[name]:.4f}"))
        rows.append(("latency", f"{result.mean_query_ms:.2f} ms/query (batched, {result.search_seconds:.2f}s in all)"))
        if result.exact_recall is not None:
            rows.append((f"recall@{result.depth} vs exact", f"{result.exact_recall:.4f}"))
    else:
        width = max(9, *(len(r.label) for r in several))

        def columns(cells: list[str], note: str = "") -> str:
            return "  ".join(f"{c:<{width}}" for c in cells) + (f"  {note}" if note else "")

        rows.append(("mode", columns([r.label for r in several]).rstrip()))
        for name in METRICS:
            rows.append((name, columns([f"{r.metrics[name]:.4f}" for r in several]).rstrip()))
        rows.append(("latency", columns([f"{r.mean_query_ms:.2f}" for r in several], "ms/query (batched)")))
        if any(r.exact_recall is not None for r in several):
            rows.append((f"recall@{result.depth} vs exact",
                         columns(["-" if r.exact_recall is None else f"{r.exact_recall:.4f}" for r in several]).rstrip()))
        rows.extend(("fusion", r.describe_mode()) for r in several if r.mode == "hybrid")
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {value}" for name, value in rows]
