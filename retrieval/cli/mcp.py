"""`retrieve mcp`: the store as tools for agents, over the Model Context Protocol (see
:mod:`retrieval.integrations.mcp`).

The SDK is an optional extra and heavy to import, so it is imported inside the command:
`retrieve --help` and every other command start without it.
"""

from __future__ import annotations

import click

from retrieval.cli.common import CliState, pass_state, warn

MISSING_EXTRA = "retrieve mcp needs the mcp extra: pip install 'retrieval[mcp]'"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001  # next to `retrieve serve`'s 8000, so both can run


@click.command("mcp")
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio: the client starts this command and talks over its stdin/stdout; "
                   "http: streamable HTTP at http://HOST:PORT/mcp.")
@click.option("--host", help=f"With --transport http: the address to listen on (default {DEFAULT_HOST}; "
                             "loopback only, as MCP over HTTP here has no authentication).")
@click.option("--port", type=click.IntRange(0, 65535), help=f"With --transport http: the port (default {DEFAULT_PORT}).")
@click.option("--allow-writes", is_flag=True, help="Also offer the ingest and delete tools (default: read-only).")
@pass_state
def mcp(state: CliState, transport: str, host: str | None, port: int | None, allow_writes: bool) -> None:
    """Serve search to agents over the Model Context Protocol (MCP).

    Tools: search, similar, get, status; with --allow-writes also ingest and delete. On
    stdio, standard output carries the protocol only: logs and warnings go to stderr.

    \b
        retrieve mcp
        retrieve mcp --allow-writes
        retrieve mcp --transport http --port 8001
    """
    if transport == "stdio" and (host is not None or port is not None):
        raise click.UsageError("--host and --port apply to --transport http only")
    host = host or DEFAULT_HOST
    port = DEFAULT_PORT if port is None else port
    if transport == "http":
        from retrieval.errors import ArgumentError
        from retrieval.http.security import is_loopback

        if not is_loopback(host):
            raise ArgumentError(f"refusing to listen on {host}: MCP over HTTP has no authentication here, so anyone "
                                f"who can reach it could read (and with --allow-writes change) every document; "
                                f"bind to {DEFAULT_HOST} (and use `retrieve serve` with an API key for other machines)")
    try:
        from retrieval.integrations.mcp import build_server
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] != "mcp":
            raise
        raise click.ClickException(MISSING_EXTRA) from None
    from retrieval.retriever import Retriever

    retriever = Retriever.from_settings(state.settings)
    try:
        server = build_server(retriever, allow_writes=allow_writes)
        if transport == "stdio":
            server.run("stdio")
        else:
            warn(f"MCP over streamable HTTP at http://{host}:{port}/mcp"
                 + (" (with the ingest and delete tools)" if allow_writes else " (read-only)"))
            server.run("streamable-http", host=host, port=port)
    finally:
        retriever.close()


COMMANDS = [mcp]
