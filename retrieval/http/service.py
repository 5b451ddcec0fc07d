"""What the endpoints do, over the :class:`~retrieval.Retriever` alone: the routes parse
and answer, this class calls the library."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool

from retrieval.config import Settings
from retrieval.embed.external import is_external
from retrieval.errors import ArgumentError, InvalidInputError, NotFoundError, RetrievalError
from retrieval.http.batcher import QueryBatcher
from retrieval.http.edge import Metrics
from retrieval.http.sync_thread import SyncThread

if TYPE_CHECKING:
    from retrieval.http.schemas import EmbeddingsRequest, SearchRequest
    from retrieval.retriever import Retriever

API_VERSION = "v1"


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)


class Service:
    """One application's state: the retriever, its settings, the query batcher, the sync
    thread, the metrics and whether the model and index are loaded."""

    def __init__(self, retriever: Retriever, settings: Settings, *, batcher: QueryBatcher | None,
                 sync_thread: SyncThread | None, metrics: Metrics) -> None:
        self.retriever = retriever
        self.settings = settings
        self.batcher = batcher
        self.sync_thread = sync_thread
        self.metrics = metrics
        self.model_loaded = False
        self.index_loaded = False
        self.started = time.time()

    @property
    def ready(self) -> bool:
        return self.model_loaded and self.index_loaded

    def warm_up(self) -> None:
        """Load the model and the index before the first request is accepted."""
        r = self.retriever
        r.encoder.load()
        self.model_loaded = True
        r.current_index()
        self.index_loaded = True
        if not is_external(self.settings.encoder.model):  # a caller's vectors: no encoder to warm
            r.encoder.encode_queries(["warm up"])  # first call allocates; keep it off the first request

    # -- endpoints ----------------------------------------------------------------------

    async def search(self, body: SearchRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        query = body.query
        arithmetic = bool(body.plus or body.minus or body.like or body.unlike)
        if body.vector is not None:
            return {"results": [h.as_dict() for h in await self._by_vector(body, arithmetic)], "took_ms": _ms(t0)}
        if self.batcher is not None and body.mode == "dense" and body.where is None and query is not None and not arithmetic:
            # Checked as every search is, before it joins a batch of other requests' queries.
            args = self.retriever.check_search([query], body.k, body.min_score)
            hits = await self.batcher.search(query, args.k, args.min_score)
        else:
            hits = await run_in_threadpool(lambda: self.retriever.search(
                query, body.k, min_score=body.min_score, where=body.where, mode=body.mode, alpha=body.alpha,
                plus=body.plus, minus=body.minus, like=body.like, unlike=body.unlike,
                include_examples=body.include_examples))
        return {"results": [h.as_dict() for h in hits], "took_ms": _ms(t0)}

    async def _by_vector(self, body: SearchRequest, arithmetic: bool) -> list[Any]:
        """The hits of a search by the caller's query vector (never batched: the batcher
        takes texts)."""
        import numpy as np

        if body.query is not None:
            raise ArgumentError("give a query or a vector, not both")
        if body.mode != "dense" or body.alpha is not None:
            raise ArgumentError(f"a search by vector is dense only (mode {body.mode!r} and alpha need a query text)")
        if arithmetic:
            raise ArgumentError("plus, minus, like and unlike take no vector: search by a query text or a vector alone")
        given = np.asarray([body.vector], np.float64)
        norm = float(np.linalg.norm(given))
        if norm == 0.0 or not np.isfinite(norm):
            raise ArgumentError("vector is all zeros: it has no direction" if norm == 0.0
                                else "vector is too large to normalise (its length overflows)")
        vectors = (given / norm).astype(np.float32)  # unit length: scores are cosine similarities
        hits = await run_in_threadpool(lambda: self.retriever.search_vectors(
            vectors, body.k, min_score=body.min_score, where=body.where))
        return list(hits[0])

    async def similar(self, doc_id: str, k: int | None, min_score: float | None, where: str | None) -> dict[str, Any]:
        t0 = time.perf_counter()
        # ``where`` is the filter's JSON text: the retriever parses it (a FilterError answers
        # 400, naming the offending part).
        hits = await run_in_threadpool(self.retriever.similar, doc_id, k, min_score=min_score, where=where)
        return {"results": [h.as_dict() for h in hits], "took_ms": _ms(t0)}

    async def upsert(self, documents: list[dict[str, Any]], wait: bool | None = None) -> dict[str, Any]:
        """Committed to the database and found by every search when this returns; in the
        published index too with ``wait`` (or ``ingest.publish: wait``, or a batch larger
        than ``ingest.background_max_docs``), else shortly after (the sync worker, woken
        now, publishes it). ``index_version`` names a version that holds the write, or
        is null while it waits for that publish."""
        t0 = time.perf_counter()
        try:
            report = await run_in_threadpool(lambda: self.retriever.ingest(documents, wait=wait, embed_first=True,
                                                                           executor="local"))
        except InvalidInputError as exc:  # the same rules as files and Python; no CLI flag to suggest here
            raise InvalidInputError(exc.problems, exc.total, noun="documents", hint="") from None
        # The background worker may have published these changes before this request's
        # own sync got the lock; either way the current version holds them then.
        version = await run_in_threadpool(self.retriever.version_holding, report)
        return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                "index_version": version, "published": version is not None, "took_ms": _ms(t0)}

    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        """OpenAI's embeddings response for ``body``, with the store's encoder."""
        return await run_in_threadpool(self._embeddings, body)

    def _embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        import base64

        model = self.settings.encoder.model
        # The configured name, or it with a hub organisation before it (sentence-transformers/...).
        if body.model != model and body.model.rsplit("/", 1)[-1] != model.rsplit("/", 1)[-1]:
            raise ArgumentError(f"model {body.model!r} is not served here: this service embeds with {model!r}")
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if not texts or len(texts) > self.settings.serve.max_batch:
            raise ArgumentError(f"input: from 1 to {self.settings.serve.max_batch} texts (max_batch), not {len(texts)}")
        for i, text in enumerate(texts):
            if not text.strip():
                raise ArgumentError(f"input[{i}]: a text needs a character other than whitespace")
        dim = self.retriever.encoder.dim
        if body.dimensions is not None and body.dimensions != dim:
            raise ArgumentError(f"dimensions: {model} gives vectors of {dim} dimensions, not {body.dimensions}")
        vectors, tokens = self.retriever.embed_texts(texts)
        if body.encoding_format == "base64":
            data: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
        else:
            data = vectors.tolist()
        used = sum(tokens)
        return {"object": "list", "model": model, "usage": {"prompt_tokens": used, "total_tokens": used},
                "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)]}

    async def get(self, doc_id: str) -> dict[str, Any]:
        doc = await run_in_threadpool(self.retriever.get, doc_id)
        return doc.as_dict()

    async def delete(self, doc_id: str, wait: bool | None = None) -> dict[str, Any]:
        deleted, _missing = await run_in_threadpool(lambda: self.retriever.delete([doc_id], wait=wait))
        if not deleted:
            raise NotFoundError(f"no document with id {doc_id!r}")
        return {"id": doc_id, "deleted": True}

    def _status(self) -> dict[str, Any]:
        st: dict[str, Any] = self.retriever.status()
        st["server"] = {
            "api_version": API_VERSION,
            "uptime_s": round(time.time() - self.started, 1),
            "query_batching": self.batcher is not None,
            "sync": self.sync_thread.state() if self.sync_thread is not None else {"running": False},
        }
        return st

    async def status(self) -> dict[str, Any]:
        return await run_in_threadpool(self._status)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, body): model and index loaded, database reachable, and the sync lag."""
        body: dict[str, Any] = {"model_loaded": self.model_loaded, "index_loaded": self.index_loaded}
        try:
            lag = await run_in_threadpool(self.retriever.lag)
            body.update(pending_changes=lag["pending_changes"], lag_seconds=lag["lag_seconds"],
                        index_version=lag["index_version"], database="ok")
        except RetrievalError as exc:
            body["database"] = str(exc)
        t = self.sync_thread
        body["sync_worker"] = "off" if t is None else ("running" if t.alive else "stopped")
        ready = self.ready and body["database"] == "ok"
        body["ready"] = ready
        return ready, body

    async def metrics_text(self) -> bytes:
        vitals = await run_in_threadpool(self.retriever.vitals)
        return self.metrics.render(vitals, self.ready)
