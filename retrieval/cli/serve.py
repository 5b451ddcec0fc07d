"""`retrieve serve`: the HTTP service (see :mod:`retrieval.http`)."""

from __future__ import annotations

import logging

import click

from retrieval.cli.common import CliState, pass_state, warn


@click.command()
@click.option("--host", help="Address to listen on (default 127.0.0.1; others require an API key).")
@click.option("--port", type=int, help="Port to listen on (default 8000).")
@click.option("--api-key", help="Key that clients must send. Prefer the RETRIEVE_API_KEY environment variable: "
                                "a flag shows in the process list.")
@click.option("--query-batching/--no-query-batching", default=True, show_default=True,
              help="Encode the queries of concurrent requests together.")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info",
              show_default=True, help="Server log level (access log at info).")
@pass_state
def serve(state: CliState, host: str | None, port: int | None, api_key: str | None, query_batching: bool,
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
    from retrieval.http import check_serve_settings, create_app, run
    from retrieval.retriever import Retriever

    settings = state.settings.with_overrides("flag --host/--port/--api-key", host=host, port=port, api_key=api_key)
    check_serve_settings(settings)
    if not settings.serve.api_key:
        warn("no API key is set: any program on this machine can read and change documents "
             "(set RETRIEVE_API_KEY to require one)")
    logging.getLogger("retrieval").setLevel(getattr(logging, log_level.upper()))
    retriever = Retriever.from_settings(settings)
    try:
        run(create_app(retriever, settings, api_key=settings.serve.api_key, query_batching=query_batching), settings,
            log_level)
    finally:
        retriever.close()


COMMANDS = [serve]
