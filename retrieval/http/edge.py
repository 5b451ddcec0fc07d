"""The outermost layer of the service: request ids, the body-size limit, Prometheus
metrics, and a generic 500 for unexpected errors (logged with their traceback, never
sent to the client)."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

from retrieval.http.errors import BodyTooLarge, error_response

log = logging.getLogger("retrieval.server")

# Latency buckets (seconds) for searches answered in milliseconds and upserts in seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class Metrics:
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
        self.segments = Gauge("retrieve_index_segments", "Segments in the current index generation.", registry=self.registry)
        self.tombstones = Gauge("retrieve_index_tombstone_fraction", "Share of the segments' rows that are dead.",
                                registry=self.registry)
        self.merging = Gauge("retrieve_merge_running", "1 while the worker runs a segment merge.", registry=self.registry)
        self.merges = Gauge("retrieve_merges_done", "Merges the running worker has published.", registry=self.registry)
        self.last_merge = Gauge("retrieve_last_merge_timestamp_seconds", "When the last merge was published (epoch).",
                                registry=self.registry)
        self.ready = Gauge("retrieve_ready", "1 when the model and the index are loaded.", registry=self.registry)

    def render(self, vitals: dict[str, Any], ready: bool) -> bytes:
        """The Prometheus text, with the gauges set from the retriever's ``vitals()``."""
        from prometheus_client import generate_latest

        self.documents.set(vitals["documents"])
        self.indexed.set(vitals["indexed"])
        self.index_bytes.set(vitals["index_bytes"])
        self.pending.set(vitals["pending_changes"])
        self.lag.set(vitals["lag_seconds"])
        self.segments.set(vitals["segments"])
        self.tombstones.set(vitals["tombstone_fraction"])
        self.merging.set(1 if vitals["merging"] else 0)
        self.merges.set(vitals["merges_done"])
        if vitals["last_merge_at"] is not None:
            self.last_merge.set(vitals["last_merge_at"])
        self.ready.set(1 if ready else 0)
        return bytes(generate_latest(self.registry))


class Edge:
    """ASGI middleware wrapping the whole application (see the module docstring)."""

    def __init__(self, app: Any, *, max_body_bytes: int, metrics: Metrics) -> None:
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

        async def send_wrapped(message: MutableMapping[str, Any]) -> None:
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
                response = error_response(413, "payload_too_large", BodyTooLarge(limit).detail, request_id,
                                          path=scope.get("path", ""), limit="max_body_bytes")
                await response(scope, receive, send_wrapped)
                return
            received = 0

            async def receive_limited() -> dict[str, Any]:
                nonlocal received
                message: dict[str, Any] = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise BodyTooLarge(limit)
                return message

            await self.app(scope, receive_limited, send_wrapped)
        except Exception:
            log.exception("request %s %s failed (request id %s)", scope.get("method"), scope.get("path"), request_id)
            if not response_started:
                response = error_response(500, "internal_error",
                                          f"internal error; the server log has the details under request id {request_id}",
                                          request_id, path=scope.get("path", ""))
                await response(scope, receive, send)
                status = 500
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(scope["method"], label).observe(time.perf_counter() - started)
