"""The search side of a store: every search of :class:`~retrieval.retriever.Retriever`
runs here, by text (with vector arithmetic) or by vector, with its arguments checked in
one place (:meth:`SearchEngine.check`) whether they come from the CLI, HTTP or Python.

A search whose index follows another history than the database's (a restore the
pipeline noticed) is answered after the index is rebuilt from the stored vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.documents import check_ids
from retrieval.errors import ArgumentError, IndexDivergedError, NotFoundError
from retrieval.filters import Filter
from retrieval.filters import parse as parse_filter
from retrieval.index.rows import PASSAGE_BITS, docs_of
from retrieval.index.segment import IndexVersion
from retrieval.search import pipeline
from retrieval.search.hits import Hit
from retrieval.store import db
from retrieval.store.repository import Store
from retrieval.sync.calibration import QueryRecorder
from retrieval.sync.keeper import EncoderSlot, IndexKeeper
from retrieval.sync.passages import Splitter, passage_vectors


@dataclass(frozen=True)
class Arguments:
    """A search's arguments, checked and with the settings' defaults filled in."""

    texts: list[str]
    k: int
    min_score: float | None
    where: Filter | None
    mode: str
    alpha: float | None


class SearchEngine:
    """Searches one store (see the module doc)."""

    def __init__(self, settings: Settings, store: Store, keeper: IndexKeeper, encoder: EncoderSlot,
                 queries: QueryRecorder | None = None) -> None:
        self.settings = settings
        self.store = store
        self.keeper = keeper
        self.encoder = encoder
        # Searches by text add their query vectors to the query sample (searches by
        # vector and by example do not: they are no sample of what users ask).
        self.queries = queries

    # -- arguments ------------------------------------------------------------------

    def check(self, texts: Sequence[str], k: int | None = None, min_score: float | None = None, mode: str = "dense",
              alpha: float | None = None, where: Any = None) -> Arguments:
        """A search's arguments checked (the one place: the CLI, HTTP and Python all come
        here), with the settings' defaults: the query texts (lone surrogates replaced), k,
        min_score and the parsed filter. Every refusal is an :class:`ArgumentError`."""
        pipeline.check_mode(mode, alpha)
        f = parse_filter(where)
        k = self.settings.search.k if k is None else k
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.search.max_k:
            raise ArgumentError(f"k must be between 1 and {self.settings.search.max_k} (max_k), got {k!r}")
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or math.isnan(min_score)):
            raise ArgumentError(f"min_score must be a number, got {min_score!r}")
        # The min_score setting is a cosine: it applies to dense searches; a min_score
        # given with a search applies to that mode's score.
        if min_score is None and mode == "dense":
            min_score = self.settings.search.min_score
        checked = [_text(t) for t in strings(texts, "queries")]
        for t in checked:
            if not isinstance(t, str):
                raise ArgumentError(f"a query is a string, got {type(t).__name__}")
            if not t.strip():
                raise ArgumentError("the query is empty")
            if len(t) > self.settings.search.max_query_chars:
                raise ArgumentError(f"the query has {len(t)} characters; the limit is {self.settings.search.max_query_chars} "
                                    "(max_query_chars)")
        return Arguments(checked, k, min_score, f, mode, alpha)

    # -- searches -------------------------------------------------------------------

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               where: Any = None, mode: str = "dense", alpha: float | None = None, plus: Sequence[str] = (),
               minus: Sequence[str] = (), like: Sequence[str] = (), unlike: Sequence[str] = (),
               include_examples: bool = False) -> list[Hit]:
        """See :meth:`retrieval.Retriever.search`."""
        plus, minus = strings(plus, "plus"), strings(minus, "minus")
        like, unlike = check_ids(like, "like"), check_ids(unlike, "unlike")
        arithmetic = bool(plus or minus or like or unlike)
        if arithmetic and mode != "dense":
            raise ArgumentError("--plus, --minus, --like and --unlike work in dense mode only")
        if query is None and not arithmetic:
            raise ArgumentError("the query is empty")
        positive = [*([query] if query is not None else []), *plus]
        args = self.check([*positive, *minus], k, min_score, mode, alpha, where)
        if not arithmetic:
            return self._by_text(args)[0]
        version = self.keeper.current()
        self.keeper.check_model(version)
        vector, exclude = self._arithmetic(args.texts[: len(positive)], args.texts[len(positive):], like, unlike)
        req = pipeline.Request(args.k, vectors=vector, where=args.where, min_score=args.min_score,
                               exclude=() if include_examples else exclude)
        return self._run(version, req)[0]

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None,
                    where: Any = None, mode: str = "dense", alpha: float | None = None,
                    snippets: bool = True) -> list[list[Hit]]:
        """See :meth:`retrieval.Retriever.search_many`."""
        return self._by_text(self.check(queries, k, min_score, mode, alpha, where), snippets)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None, *, min_score: float | None = None,
                       where: Any = None) -> list[list[Hit]]:
        """See :meth:`retrieval.Retriever.search_vectors`."""
        args = self.check([], k, min_score, "dense", None, where)
        version = self.keeper.current()
        if vectors.ndim != 2 or vectors.shape[1] != version.manifest.dim:
            raise ArgumentError(f"query vectors must have {version.manifest.dim} dimensions (the index's), "
                                f"got shape {vectors.shape}")
        return self._run(version, pipeline.Request(args.k, vectors=vectors, min_score=args.min_score, where=args.where))

    # -- running --------------------------------------------------------------------

    def _by_text(self, args: Arguments, snippets: bool = True) -> list[list[Hit]]:
        version = None
        vectors = None
        if args.mode != "keyword":  # keyword search reads the database only
            version = self.keeper.current()
            self.keeper.check_model(version)
            vectors = (self.encoder.get().encode_queries(args.texts) if args.texts
                       else np.empty((0, version.manifest.dim), np.float32))
        found = self._run(version, pipeline.Request(args.k, vectors=vectors, texts=args.texts, mode=args.mode,
                                                    where=args.where, min_score=args.min_score, alpha=args.alpha,
                                                    snippets=snippets))
        if self.queries is not None and vectors is not None:
            self.queries.add(self.encoder.get().model_key, vectors, args.texts)
        return found

    def _splitter(self) -> Splitter:
        return Splitter.of(self.settings.index, self.encoder.get())

    def _run(self, version: IndexVersion | None, req: pipeline.Request) -> list[list[Hit]]:
        def run(v: IndexVersion | None) -> list[list[Hit]]:
            # A search's statements stop at its deadline, whatever the query and the store.
            with db.deadline(self.settings.search.timeout_ms / 1000):
                return pipeline.run(self.store, v, self.encoder.get, req, ef_search=self.settings.index.hnsw_ef_search,
                                    threads=self.settings.search.threads, exact_rows=self.settings.search.filter_exact_rows,
                                    splitter=self._splitter)

        try:
            return run(version)
        except IndexDivergedError as exc:
            if version is None:
                raise
            return run(self.keeper.rebuild_diverged(version, str(exc)))

    def document_vectors(self, external_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """See :meth:`retrieval.Retriever.document_vectors`."""
        return self._vectors(self.store.get_many(check_ids(external_ids)))

    def _vectors(self, docs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each stored document's vector, by external id: the normalised mean of its
        passages' vectors (its own vector when it is one passage)."""
        if not docs:
            return {}
        rows = [(d.id, d.text, d.content_hash) for d in docs.values()]
        got = passage_vectors(self.store, self.encoder.get(), self._splitter(), rows)
        owners = docs_of(got.rows, PASSAGE_BITS)
        by_id = {}
        for doc_id in set(owners.tolist()):
            mean = got.matrix[owners == doc_id].mean(axis=0)
            by_id[doc_id] = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
        return {e: by_id[d.id] for e, d in docs.items()}

    def _arithmetic(self, positive: Sequence[str], negative: Sequence[str], like: Sequence[str],
                    unlike: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """The normalised query vector of a recommendation, and the examples' internal ids."""
        encoder = self.encoder.get()
        texts = [*positive, *negative]
        encoded = encoder.encode_queries(texts) if texts else np.empty((0, encoder.dim), np.float32)
        total = encoded[: len(positive)].sum(axis=0) - encoded[len(positive):].sum(axis=0)
        examples: list[int] = []
        if like or unlike:
            docs = self.store.get_many([*like, *unlike])
            missing = [e for e in (*like, *unlike) if e not in docs]
            if missing:
                raise NotFoundError(f"no document with id {missing[0]!r}")
            by_id = self._vectors(docs)
            for e in like:
                total = total + by_id[e]
            for e in unlike:
                total = total - by_id[e]
            examples = [docs[e].id for e in (*like, *unlike)]
        norm = float(np.linalg.norm(total))
        if not np.isfinite(norm) or norm < 1e-6:
            raise ArgumentError("the positive and negative examples cancel out: there is no direction to search")
        return np.asarray(total / norm, dtype=np.float32).reshape(1, -1), examples


def strings(value: Any, what: str) -> list[str]:
    """A sequence of texts as a list; a bare string (which would be read as one-letter
    texts) is a TypeError."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of texts, not a single string; for one, pass [{value!r:.60}]")
    return list(value)


def _text(query: Any) -> Any:
    """A query with lone surrogates (which no encoder or database takes) replaced."""
    if isinstance(query, str) and any("\ud800" <= ch <= "\udfff" for ch in query):
        return query.encode("utf-8", "replace").decode("utf-8")
    return query
