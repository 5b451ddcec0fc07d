"""`retrieve serve`, and the client side of `retrieve search --server`.

The client half imports only httpx: `retrieve search --server URL` answers in
milliseconds because it loads neither torch, FAISS nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import click

from retrieval.errors import ConfigError, NotFoundError, RetrievalError


class ServiceError(RetrievalError):
    """The retrieval service could not be reached or refused a request."""


@dataclass(frozen=True)
class RemoteHit:
    """A search result from the service (the fields of :class:`retrieval.Hit` it sends)."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}


class RemoteSearcher:
    """Searches a running `retrieve serve` with the interface of the Retriever's search.

    >>> RemoteSearcher("http://127.0.0.1:8000").search("refund policy", 3)  # doctest: +SKIP
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the retrieval service at {self.url} ({exc}); start it with `retrieve serve`, "
                "or search locally without --server / RETRIEVE_SERVER"
            ) from exc
        if response.status_code == 401:
            raise ServiceError(f"the service at {self.url} refused the API key; set RETRIEVE_API_KEY to its key")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            if response.status_code == 404 and message is None:
                raise ServiceError(f"{self.url}{path} was not found: is {self.url} a `retrieve serve` service?")
            error = NotFoundError if response.status_code == 404 else ServiceError
            raise error(f"the service answered {response.status_code}: {message or response.text[:200]}")
        if not isinstance(body, dict):
            raise ServiceError(f"the service at {self.url} did not answer JSON; is it a `retrieve serve` service?")
        return body

    def search(self, query: str, k: int | None = None, *, min_score: float | None = None) -> list[RemoteHit]:
        """The top-``k`` documents for ``query`` (the service's search_k when None)."""
        payload: dict[str, Any] = {"query": query}
        if k is not None:
            payload["k"] = k
        if min_score is not None:
            payload["min_score"] = min_score
        body = self._post("/v1/search", payload)
        return [RemoteHit(r["id"], float(r["score"]), r["text"], r.get("metadata") or {}) for r in body["results"]]

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None) -> list[list[RemoteHit]]:
        """One request per query over one kept-alive connection (the service batches them)."""
        return [self.search(q, k, min_score=min_score) for q in queries]


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1; others require an API key).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--api-key", help="Key that clients must send. Prefer the RETRIEVE_API_KEY environment variable: "
                                "a flag shows in the process list.")
@click.option("--query-batching/--no-query-batching", default=True, show_default=True,
              help="Encode the queries of concurrent requests together.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log level (access log at info).")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None, api_key: str | None, query_batching: bool,
          log_level: str) -> None:
    """Serve search, writes, status, health and metrics over HTTP (JSON API under /v1).

    Keeps the model and the index loaded, applies other writers' changes in a
    background worker, and on SIGTERM or Ctrl-C stops accepting, finishes requests in
    flight and publishes pending index work. The OpenAPI schema is at /openapi.json.

    \b
        retrieve serve
        RETRIEVE_API_KEY=$(cat key.txt) retrieve serve --host 0.0.0.0 --port 8080
        curl -s localhost:8000/v1/search -H 'Content-Type: application/json' -d '{"query": "refund policy", "k": 3}'
    """
    import logging

    import uvicorn

    from retrieval.cli import _settings
    from retrieval.retriever import Retriever
    from retrieval.server import check_serve_settings, create_app, is_loopback

    settings = _settings(ctx)
    settings = settings.with_overrides("flag --host/--port/--api-key", host=host, port=port, api_key=api_key)
    check_serve_settings(settings)
    if not settings.api_key:
        click.echo("retrieve: no API key is set: any program on this machine can read and change documents "
                   "(set RETRIEVE_API_KEY to require one)", err=True)
    logging.getLogger("retrieval").setLevel(getattr(logging, log_level.upper()))
    retriever = Retriever.from_settings(settings)
    try:
        app = create_app(retriever, settings, api_key=settings.api_key, query_batching=query_batching)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_level=log_level,
            # Requests in flight get this long to finish after SIGTERM.
            timeout_graceful_shutdown=30,
            server_header=False,
            proxy_headers=not is_loopback(settings.host),
        )
        server = uvicorn.Server(config)
        server.run()
        if not server.started:
            raise ConfigError(f"could not start the service on {settings.host}:{settings.port} (see the log above; "
                              "is the port in use? choose another with --port)")
    finally:
        retriever.close()


__all__ = ["serve", "RemoteSearcher", "RemoteHit", "ServiceError"]
