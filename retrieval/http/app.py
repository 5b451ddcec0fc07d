"""The retrieval service over HTTP: one process that keeps the model and the index warm.

:func:`create_app` builds a FastAPI application around a :class:`~retrieval.Retriever`:

* ``POST /v1/search``, ``POST /v1/documents`` (batch upsert), ``GET``/``DELETE
  /v1/documents/{id}``, ``GET /v1/status``, ``GET /openapi.json``: JSON, behind the API
  key when one is configured;
* ``GET /healthz`` (liveness) and ``GET /readyz`` (model and index loaded, sync lag):
  open, for load balancers and orchestrators;
* ``GET /metrics``: Prometheus text (requests, latencies, documents, index size, lag);
* ``GET /``: the search page (:mod:`retrieval.http.page`), open: it holds no data, and
  its API calls carry the key.

Inside, a :class:`~retrieval.http.sync_thread.SyncThread` applies changes made by other
writers (plain SQL, other processes), and a :class:`~retrieval.http.batcher.QueryBatcher`
encodes the queries of concurrent requests together.

Writes are durable and searchable when their response is sent: an upsert commits to
the database and publishes a new index version before it answers.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from retrieval.config import Settings
from retrieval.errors import ConfigError
from retrieval.http import errors
from retrieval.http.batcher import QueryBatcher
from retrieval.http.edge import Edge, Metrics
from retrieval.http.page import add_page
from retrieval.http.routes import add_routes
from retrieval.http.schemas import make_schemas
from retrieval.http.security import is_loopback, key_checker
from retrieval.http.service import API_VERSION, Service
from retrieval.http.sync_thread import SyncThread

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

log = logging.getLogger("retrieval.server")


def create_app(
    retriever: Retriever,
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
    metrics = Metrics()
    batcher = QueryBatcher(retriever, max_wait_s=batch_wait_s) if query_batching else None
    if batcher is not None:
        batcher.batch_sizes = metrics.batch.observe
    sync_thread = SyncThread(retriever, sync_interval_s or s.worker.poll_interval) if run_sync_thread else None
    service = Service(retriever, s, batcher=batcher, sync_thread=sync_thread, metrics=metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if warm_up:
            await run_in_threadpool(service.warm_up)
        if sync_thread is not None:
            sync_thread.start()
            # One publisher per store: a write returning before its publish wakes the worker.
            retriever.publisher.delegate = sync_thread.wake
        if batcher is not None:
            batcher.start()
        log.info("ready: %s", s.store.database_url)
        try:
            yield
        finally:
            # uvicorn gets here after it stopped accepting and in-flight requests ended.
            if batcher is not None:
                await batcher.stop()
            if sync_thread is not None:
                retriever.publisher.delegate = None
                await run_in_threadpool(sync_thread.stop)  # publishes what is pending

    app = FastAPI(
        title="retrieval",
        version=API_VERSION,
        summary="Semantic search over documents stored in a database.",
        lifespan=lifespan,
        openapi_url=None,  # served by the routes, behind the key
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = service
    app.state.batcher = batcher
    app.state.sync_thread = sync_thread
    errors.install(app)
    add_routes(app, service, make_schemas(s), key_checker(api_key))
    add_page(app)
    app.add_middleware(Edge, max_body_bytes=s.serve.max_body_bytes, metrics=metrics)
    return app


def run(app: FastAPI, settings: Settings, log_level: str = "info") -> None:
    """Serve ``app`` with uvicorn on the configured host and port until SIGTERM or Ctrl-C:
    requests in flight get 30 s to finish. One line when the service cannot start."""
    import uvicorn

    host, port = settings.serve.host, settings.serve.port
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=30,
                            server_header=False, proxy_headers=not is_loopback(host))
    server = uvicorn.Server(config)
    server.run()
    if not server.started:
        raise ConfigError(f"could not start the service on {host}:{port} (see the log above; is the port in use? "
                          "choose another with --port)")
