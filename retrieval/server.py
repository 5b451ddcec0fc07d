"""The retrieval service over HTTP: one process that keeps the model and the index warm.

:func:`create_app` builds a FastAPI application around a :class:`~retrieval.Retriever`:

* ``POST /v1/search``, ``POST /v1/documents`` (batch upsert), ``GET``/``DELETE
  /v1/documents/{id}``, ``GET /v1/status``, ``GET /openapi.json``: JSON, behind the API
  key when one is configured;
* ``GET /healthz`` (liveness) and ``GET /readyz`` (model and index loaded, sync lag):
  open, for load balancers and orchestrators;
* ``GET /metrics``: Prometheus text (requests, latencies, documents, index size, lag).

Inside, a :class:`~retrieval.worker.Worker` runs in a background thread and applies
changes made by other writers (plain SQL, other processes), and a :class:`QueryBatcher`
encodes the queries of concurrent requests together.

Writes are durable and searchable when their response is sent: an upsert commits to
the database and publishes a new index version before it answers.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations
# at run time, and the request models are built inside create_app (their limits come
# from the settings), where postponed annotations could not be resolved.

import asyncio
import hmac
import ipaddress
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from retrieval.config import Settings
from retrieval.errors import ConfigError, ModelMismatchError, NotFoundError, RetrievalError, StoreError

log = logging.getLogger("retrieval.server")

API_VERSION = "v1"
# Paths answered without an API key: probes must work before anyone has a key.
OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# Latency buckets (seconds) for searches answered in milliseconds and upserts in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# -- start-up checks --------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public address


def check_serve_settings(settings: Settings) -> None:
    """Refuse settings that would expose the service or cannot work.

    Raises :class:`ConfigError` with what to change.
    """
    if not is_loopback(settings.host) and not settings.api_key:
        raise ConfigError(
            f"refusing to listen on {settings.host} without an API key: anyone who can reach it could read and "
            "change every document; set RETRIEVE_API_KEY (or api_key in the config), or bind to 127.0.0.1"
        )
    if settings.api_key is not None and len(settings.api_key) < 16:
        raise ConfigError("api_key: use at least 16 characters (for example: python -c 'import secrets; print(secrets.token_urlsafe())')")
    if not 0 <= settings.port <= 65535:
        raise ConfigError(f"port: must be between 0 and 65535, got {settings.port}")
    for name in ("max_body_bytes", "max_batch"):
        if getattr(settings, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(settings, name)}")


# -- errors -----------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised while streaming a body past ``max_body_bytes``.

    An HTTPException so that FastAPI's body parsing re-raises it instead of turning it
    into a generic 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (max_body_bytes)")


def _error(status: int, code: str, message: str, request_id: str, **extra: Any) -> JSONResponse:
    body = {"error": code, "message": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


def _request_id(request: Request) -> str:
    return str(request.scope.get("request_id") or "-")


_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type", 503: "unavailable"}


# -- the micro-batcher ------------------------------------------------------------------


@dataclass
class _Pending:
    query: str
    k: int
    min_score: float | None
    future: "asyncio.Future[list[Any]]"


class QueryBatcher:
    """Encodes the queries of concurrent search requests in one model call.

    Requests put their query on a queue and await a future. One task takes whatever is
    queued, waits up to ``max_wait_s`` for more while requests are arriving together
    (never when a lone client is asking, so it adds no latency there), encodes the batch
    on a single dedicated thread and searches all its vectors at once. One encoding
    thread also keeps concurrent requests from oversubscribing the CPU cores, which
    per-request encoding on a thread pool does.
    """

    def __init__(self, retriever: Any, *, max_batch: int = 64, max_wait_s: float = 0.002, max_queued: int = 4096) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.batch_sizes: Callable[[int], None] | None = None  # metrics hook
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_batch = 1

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="query-encoder")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="query-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def search(self, query: str, k: int, min_score: float | None) -> list[Any]:
        assert self._queue is not None, "QueryBatcher.start() was not called"
        if self._queue.qsize() >= self.max_queued:
            raise HTTPException(503, f"more than {self.max_queued} searches are waiting; retry shortly")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(query, k, min_score, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if self._last_batch <= 1 or remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.done()]  # clients that went away
            if not batch:
                continue
            self._last_batch = len(batch)
            if self.batch_sizes is not None:
                self.batch_sizes(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._search, batch)
            except Exception as exc:  # handed to every waiting request, which reports it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, hits in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(hits)

    def _search(self, batch: Sequence[_Pending]) -> list[list[Any]]:
        r = self.retriever
        version = r.current_index()
        if version.manifest.model_key != r.encoder.model_key:
            raise ModelMismatchError(
                f"the index was built with {version.manifest.model_key} but the service's model is "
                f"{r.encoder.model_key}; run `retrieve reindex`"
            )
        vectors = r.encoder.encode_queries([p.query for p in batch])
        # One search at the largest k, cut per request: results are sorted best first,
        # so the top k of the top K are the top k.
        k_max = max(p.k for p in batch)
        rows = r.search_vectors(vectors, k_max, version=version)
        return [
            [h for h in hits[: p.k] if p.min_score is None or h.score >= p.min_score]
            for p, hits in zip(batch, rows)
        ]


def pre_embed(retriever: Any, texts: Sequence[str]) -> int:
    """Store the vectors of ``texts`` that have none yet, before their documents are written.

    Between a write's commit and its sync, searches score the pending documents exactly
    and would embed them themselves, on the search path. Embedding first makes that
    window cheap for searches and the sync itself quick (it finds the vectors stored).
    Vectors of a write that then fails are unused embeddings, which `retrieve compact`
    removes. Returns how many texts were embedded.
    """
    from retrieval.store.repository import content_hash
    from retrieval.sync import embed_missing

    _, embedded = embed_missing(retriever.store, retriever.encoder, {content_hash(t): t for t in texts})
    return len(embedded)


# -- the background sync loop -----------------------------------------------------------


class SyncThread:
    """Runs the store's :class:`~retrieval.worker.Worker` on a daemon thread.

    When a separate ``retrieve worker`` already holds the store, this one stands by and
    retries, so the store never has two workers and never none while the service runs.
    """

    def __init__(self, retriever: Any, poll_interval: float) -> None:
        from retrieval.worker import Worker

        self.retriever = retriever
        self.worker = Worker(retriever, poll_interval=poll_interval)
        self.poll_interval = poll_interval
        self.standing_by = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sync-worker", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        from retrieval.worker import WorkerBusyError

        while not self.worker.stop_event.is_set():
            try:
                self.worker.run()
                self.standing_by = False
            except WorkerBusyError as exc:
                if not self.standing_by:
                    log.info("another worker keeps this store in sync; standing by (%s)", exc)
                self.standing_by = True
                self.worker.stop_event.wait(max(5.0, self.poll_interval * 5))
            except Exception as exc:  # keep serving: searches stay exact without the index being current
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("the sync worker failed; restarting it")
                self.worker.stop_event.wait(max(5.0, self.poll_interval * 5))

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the cycle in hand, then publish what arrived meanwhile."""
        self.worker.stop_event.set()
        self._thread.join(timeout)
        if not self.standing_by:
            try:
                report = self.retriever.sync()
                if report.changes:
                    log.info("published %d pending changes before exiting (version %s)", report.changes, report.version)
            except RetrievalError as exc:
                log.error("could not publish pending changes on exit: %s (the next start applies them)", exc)


# -- metrics ----------------------------------------------------------------------------


class _Metrics:
    """Prometheus collectors in a registry of their own (one per app, so tests can
    build several apps in one process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series double the output and nobody graphs them
        self.registry = CollectorRegistry()
        self.requests = Counter("retrieve_http_requests", "HTTP requests answered.", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("retrieve_http_request_duration_seconds", "Time to answer an HTTP request.",
                                 ["method", "route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch = Histogram("retrieve_query_batch_size", "Queries encoded together by the micro-batcher.",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=self.registry)
        self.documents = Gauge("retrieve_documents", "Documents in the database.", registry=self.registry)
        self.indexed = Gauge("retrieve_index_vectors", "Vectors in the current index version.", registry=self.registry)
        self.index_bytes = Gauge("retrieve_index_bytes", "Bytes of the index folder on disk.", registry=self.registry)
        self.pending = Gauge("retrieve_sync_pending_changes", "Change-log entries not yet in the index.",
                             registry=self.registry)
        self.lag = Gauge("retrieve_sync_lag_seconds", "Age of the oldest change not yet in the index.",
                         registry=self.registry)
        self.ready = Gauge("retrieve_ready", "1 when the model and the index are loaded.", registry=self.registry)


class _Edge:
    """Outermost ASGI layer: request ids, the body-size limit, metrics, and a generic
    500 for unexpected errors (logged with their traceback, never sent to the client)."""

    def __init__(self, app: Any, *, max_body_bytes: int, metrics: _Metrics) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex[:16]
        scope["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapped(message: dict[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.max_body_bytes
        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                response = _error(413, "payload_too_large", BodyTooLarge(limit).detail, request_id, limit="max_body_bytes")
                await response(scope, receive, send_wrapped)
                return
            received = 0

            async def receive_limited() -> dict[str, Any]:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            await self.app(scope, receive_limited, send_wrapped)
        except Exception:
            log.exception("request %s %s failed (request id %s)", scope.get("method"), scope.get("path"), request_id)
            if not response_started:
                response = _error(500, "internal_error",
                                  f"internal error; the server log has the details under request id {request_id}",
                                  request_id)
                await response(scope, receive, send)
                status = 500
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(scope["method"], label).observe(time.perf_counter() - started)


# -- validation messages ----------------------------------------------------------------

# Which setting bounds a request field: named in 4xx answers so that users know what
# to change (or ask their operator to change).
_LIMITS = {"k": "max_k", "query": "max_query_chars", "documents": "max_batch"}


def _describe(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    parts: list[str] = []
    details: list[dict[str, Any]] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        message = str(err.get("msg", "invalid"))
        field = loc[0] if loc else ""
        if not loc and err.get("type") == "model_attributes_type":
            message = "expected a JSON object (send it with Content-Type: application/json)"
        limit = None
        if field in _LIMITS and len(loc) == 1 and err.get("type") in ("less_than_equal", "too_long", "string_too_long"):
            limit = _LIMITS[field]
            message = f"{message} ({limit})"
        parts.append(f"{where}: {message}")
        details.append({"field": where, "message": message, "type": err.get("type"), **({"limit": limit} if limit else {})})
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else ""), details


# -- the application --------------------------------------------------------------------


def create_app(
    retriever: Any,
    settings: Settings | None = None,
    *,
    api_key: str | None = None,
    query_batching: bool = True,
    batch_wait_s: float = 0.002,
    sync_interval_s: float | None = None,
    run_sync_thread: bool = True,
    warm_up: bool = True,
) -> FastAPI:
    """The FastAPI application serving ``retriever``.

    ``settings`` (default: the retriever's) give the limits; ``api_key`` (None: no key
    required) protects everything but /healthz and /readyz. ``query_batching`` encodes
    concurrent queries together (see :class:`QueryBatcher`). ``sync_interval_s``
    (default ``worker_poll_interval``) is how often the background worker looks for
    changes from other writers. ``warm_up`` loads the model and the index before the
    first request is accepted.
    """
    s = settings or retriever.settings
    metrics = _Metrics()
    state: dict[str, Any] = {"model_loaded": False, "index_loaded": False, "started": time.time()}
    batcher = QueryBatcher(retriever, max_wait_s=batch_wait_s) if query_batching else None
    if batcher is not None:
        batcher.batch_sizes = metrics.batch.observe
    sync_thread = SyncThread(retriever, sync_interval_s or s.worker_poll_interval) if run_sync_thread else None
    key = api_key.encode() if api_key else None

    def load() -> None:
        retriever.encoder.load()
        state["model_loaded"] = True
        retriever.current_index()
        state["index_loaded"] = True
        retriever.encoder.encode_queries(["warm up"])  # first call allocates; keep it off the first request

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> Any:
        if warm_up:
            await run_in_threadpool(load)
        if sync_thread is not None:
            sync_thread.start()
        if batcher is not None:
            batcher.start()
        log.info("ready: %s", s.database_url)
        try:
            yield
        finally:
            # uvicorn gets here after it stopped accepting and in-flight requests ended.
            if batcher is not None:
                await batcher.stop()
            if sync_thread is not None:
                await run_in_threadpool(sync_thread.stop)

    app = FastAPI(
        title="retrieval",
        version=API_VERSION,
        summary="Semantic search over documents stored in a database.",
        lifespan=lifespan,
        openapi_url=None,  # served below, behind the key
        docs_url=None,
        redoc_url=None,
    )
    app.state.batcher = batcher
    app.state.sync_thread = sync_thread

    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: KEY")

    def require_key(
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
        x_api_key: str | None = Security(header_key),
    ) -> None:
        if key is None:
            return
        given = credentials.credentials if credentials is not None else x_api_key
        # Constant-time comparison: response times must not reveal how much of a guess matched.
        if not given or not hmac.compare_digest(given.encode(), key):
            raise HTTPException(
                401,
                "missing or wrong API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`",
                headers={"WWW-Authenticate": "Bearer"},
            )

    protected = [Depends(require_key)]

    # -- models (limits from the settings, so the OpenAPI schema states them) ---------

    class SearchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        query: str = Field(min_length=1, max_length=s.max_query_chars, description="The text to search for.")
        k: int = Field(s.search_k, ge=1, le=s.max_k, description="How many results (at most max_k).")
        min_score: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False,
                                        description="Leave out results with a lower cosine similarity.")

    class SearchHit(BaseModel):
        id: str
        score: float
        text: str
        metadata: dict[str, Any]

    class SearchResponse(BaseModel):
        results: list[SearchHit]
        took_ms: float

    class DocumentIn(BaseModel):
        model_config = ConfigDict(extra="forbid")
        id: str = Field(min_length=1, max_length=1024, pattern=r"\S", description="Your id for the document.")
        text: str = Field(min_length=1, pattern=r"\S", description="The text that is embedded and searched.")
        metadata: dict[str, Any] = Field(default_factory=dict, description="Any JSON object, returned with results.")

    class UpsertRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        documents: list[DocumentIn] = Field(min_length=1, max_length=s.max_batch,
                                            description="Documents to add or replace (matched by id).")

    class UpsertResponse(BaseModel):
        added: int
        updated: int
        unchanged: int
        index_version: str | None
        took_ms: float

    class DocumentOut(BaseModel):
        id: str
        text: str
        metadata: dict[str, Any]

    class DeleteResponse(BaseModel):
        id: str
        deleted: bool

    class ErrorResponse(BaseModel):
        error: str
        message: str
        request_id: str

    errors: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse} for code in (400, 401, 413, 422, 500, 503)
    }

    # -- error handlers ----------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            where = bad_json[0].get("loc", ("body", "?"))[-1]
            reason = ctx.get("error", "cannot be parsed")
            return _error(400, "malformed_json", f"the request body is not valid JSON: {reason} (at character {where})",
                          _request_id(request))
        message, details = _describe(errs)
        return _error(422, "invalid_request", message, _request_id(request), details=details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        response = _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "error"), str(exc.detail), _request_id(request))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RetrievalError)
    async def _retrieval(request: Request, exc: RetrievalError) -> JSONResponse:
        if isinstance(exc, NotFoundError):
            return _error(404, "not_found", str(exc), _request_id(request))
        if isinstance(exc, ModelMismatchError):
            return _error(409, "model_mismatch", str(exc), _request_id(request))
        if isinstance(exc, StoreError):
            log.error("store error (request id %s): %s", _request_id(request), exc)
            return _error(503, "store_unavailable", str(exc), _request_id(request))
        return _error(422, "invalid_request", str(exc), _request_id(request))

    @app.exception_handler(RecursionError)
    async def _nested(request: Request, _exc: RecursionError) -> JSONResponse:
        return _error(400, "malformed_json", "the request body is nested too deeply", _request_id(request))

    # -- endpoints ---------------------------------------------------------------------

    @app.post("/v1/search", response_model=SearchResponse, dependencies=protected, responses=errors, tags=["search"])
    async def search(body: SearchRequest) -> Any:
        """The ``k`` documents closest in meaning to ``query``, best first."""
        t0 = time.perf_counter()
        if not body.query.strip():
            raise HTTPException(422, "query: the query is empty")
        min_score = s.min_score if body.min_score is None else body.min_score
        if batcher is not None:
            hits = await batcher.search(body.query, body.k, min_score)
        else:
            hits = await run_in_threadpool(retriever.search, body.query, body.k, min_score=min_score)
        return {"results": [h.as_dict() for h in hits], "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    def _upsert(docs: list[dict[str, Any]]) -> Any:
        pre_embed(retriever, [d["text"] for d in docs])
        return retriever.ingest(docs)

    @app.post("/v1/documents", response_model=UpsertResponse, dependencies=protected, responses=errors,
              tags=["documents"])
    async def upsert(body: UpsertRequest) -> Any:
        """Add or replace documents. When the response arrives they are committed to the
        database and in the published index."""
        t0 = time.perf_counter()
        docs = [{"id": d.id, "text": d.text, "metadata": d.metadata} for d in body.documents]
        report = await run_in_threadpool(_upsert, docs)
        # The background worker may have published these changes before this request's
        # own sync got the lock; either way the current version holds them now.
        manifest = retriever.index_store.read_manifest()
        return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                "index_version": manifest.version if manifest else None,
                "took_ms": round((time.perf_counter() - t0) * 1000, 3)}

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentOut, dependencies=protected,
             responses={**errors, 404: {"model": ErrorResponse}}, tags=["documents"])
    async def get_document(doc_id: str) -> Any:
        """One document by its id."""
        hit = await run_in_threadpool(retriever.get, doc_id)
        return {"id": hit.id, "text": hit.text, "metadata": hit.metadata}

    @app.delete("/v1/documents/{doc_id:path}", response_model=DeleteResponse, dependencies=protected,
                responses={**errors, 404: {"model": ErrorResponse}}, tags=["documents"])
    async def delete_document(doc_id: str) -> Any:
        """Delete a document; searches stop returning it when the response arrives."""
        deleted, _missing = await run_in_threadpool(retriever.delete, [doc_id])
        if not deleted:
            raise NotFoundError(f"no document with id {doc_id!r}")
        return {"id": doc_id, "deleted": True}

    def _status() -> dict[str, Any]:
        st = retriever.status()
        st["server"] = {
            "api_version": API_VERSION,
            "uptime_s": round(time.time() - state["started"], 1),
            "query_batching": batcher is not None,
            "sync": _sync_state(),
        }
        return st

    def _sync_state() -> dict[str, Any]:
        if sync_thread is None:
            return {"running": False}
        w = sync_thread.worker
        return {"running": sync_thread.alive, "standing_by": sync_thread.standing_by, "cycles": w.cycles,
                "last_sync_at": w.last_sync_at, "last_error": w.last_error or sync_thread.error}

    @app.get("/v1/status", dependencies=protected, responses=errors, tags=["service"])
    async def status() -> dict[str, Any]:
        """Documents, index version and size, pending changes, model, and the sync worker."""
        return await run_in_threadpool(_status)

    def _lag() -> dict[str, Any]:
        store = retriever.store
        manifest = retriever.index_store.read_manifest()
        last_seq = manifest.last_seq if manifest else 0
        with store.read() as conn:
            pending = store.count_changes(conn, last_seq)
            oldest = store.oldest_change_after(conn, last_seq)
        lag = round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0
        return {"pending_changes": pending, "lag_seconds": lag, "manifest": manifest}

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses={503: {"description": "Not ready yet (or any more)."}})
    async def readyz() -> JSONResponse:
        """Readiness: model and index loaded, database reachable; reports the sync lag."""
        body: dict[str, Any] = {"model_loaded": state["model_loaded"], "index_loaded": state["index_loaded"]}
        try:
            lag = await run_in_threadpool(_lag)
            body.update(pending_changes=lag["pending_changes"], lag_seconds=lag["lag_seconds"],
                        index_version=lag["manifest"].version if lag["manifest"] else None, database="ok")
        except RetrievalError as exc:
            body["database"] = str(exc)
        body["sync_worker"] = "off" if sync_thread is None else ("running" if sync_thread.alive else "stopped")
        ready = bool(state["model_loaded"] and state["index_loaded"] and body["database"] == "ok")
        body["ready"] = ready
        return JSONResponse(body, status_code=200 if ready else 503)

    def _metrics_text() -> bytes:
        from prometheus_client import generate_latest

        lag = _lag()
        manifest = lag["manifest"]
        metrics.documents.set(retriever.store.stats(None)["documents"])
        metrics.indexed.set(manifest.count if manifest else 0)
        metrics.index_bytes.set(retriever.index_store.disk_usage())
        metrics.pending.set(lag["pending_changes"])
        metrics.lag.set(lag["lag_seconds"])
        metrics.ready.set(1 if state["model_loaded"] and state["index_loaded"] else 0)
        return bytes(generate_latest(metrics.registry))

    @app.get("/metrics", dependencies=protected, responses=errors, tags=["service"],
             response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests, latencies, documents, index size, sync lag."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await run_in_threadpool(_metrics_text), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    app.add_middleware(_Edge, max_body_bytes=s.max_body_bytes, metrics=metrics)
    return app


__all__ = ["create_app", "check_serve_settings", "is_loopback", "QueryBatcher", "SyncThread"]

