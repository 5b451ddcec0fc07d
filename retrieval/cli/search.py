"""`retrieve search`: the documents closest in meaning to a query, from this machine's
store or from a running `retrieve serve`."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

import click

from retrieval.cli.common import CliState, echo_json, pass_state, shorten
from retrieval.errors import RetrievalError

log = logging.getLogger("retrieval")

# Queries per search_many call in batch mode: bounds memory, keeps encoder batches full.
QUERY_BATCH = 256


def hit_lines(hits: Iterable[Any]) -> list[str]:
    """How a search's results print: rank, score, id, text and metadata, one line each."""
    lines = []
    for rank, hit in enumerate(hits, 1):
        meta = f"  {json.dumps(hit.metadata, ensure_ascii=False)}" if hit.metadata else ""
        lines.append(f"{rank:>2}. {hit.score:.4f}  {hit.id}  {shorten(hit.text)}{meta}")
    return lines or ["No results."]


def print_hits(hits: Iterable[Any]) -> None:
    for line in hit_lines(hits):
        click.echo(line)


@click.command()
@click.argument("query", required=False)
@click.option("-k", "--top-k", type=int, help="Number of results (default: search_k setting, 5).")
@click.option("--min-score", type=float, help="Leave out results scoring below this cosine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a results list.")
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Batch mode: one query per line (or JSONL with id and text); one JSON line per query.")
@click.option("--server", envvar="RETRIEVE_SERVER", metavar="URL",
              help="Ask a running `retrieve serve` at URL instead of loading the model here. Env: RETRIEVE_SERVER.")
@pass_state
@click.pass_context
def search(ctx: click.Context, state: CliState, query: str | None, top_k: int | None, min_score: float | None,
           as_json: bool, queries_file: str | None, server: str | None) -> None:
    """Show the documents closest in meaning to QUERY.

    \b
        retrieve search "What are good shoes for jogging?"
        retrieve search "refund policy" -k 10 --min-score 0.3 --json
        retrieve search --queries queries.jsonl > results.jsonl
        retrieve search --server http://127.0.0.1:8000 "refund policy"
    """
    if queries_file and query:
        raise click.UsageError("give either QUERY or --queries, not both")
    if not queries_file and not query:
        raise click.UsageError("give a QUERY (or --queries FILE)")
    settings = state.settings
    retriever: Any
    prefetch = None
    if server:
        # Only httpx is imported: the service holds the model, so this answers in milliseconds.
        from retrieval.client import RemoteSearcher

        retriever = RemoteSearcher(server, api_key=settings.api_key)
    else:
        # In a fresh process the query is encoded in a forked child while SQLAlchemy and
        # FAISS import and the index is read (see retrieval.cli.prefetch).
        if query and not queries_file:
            from retrieval.cli.prefetch import start as start_prefetch

            prefetch = start_prefetch(settings, query)
            if prefetch is not None:
                ctx.call_on_close(prefetch.close)
        from retrieval.retriever import Retriever

        retriever = Retriever.from_settings(settings)
    ctx.call_on_close(retriever.close)
    if queries_file:
        from retrieval.readers import read_queries

        try:
            queries = read_queries(queries_file)
        except (OSError, ValueError) as exc:
            raise RetrievalError(str(exc)) from exc
        for start in range(0, len(queries), QUERY_BATCH):
            part = queries[start : start + QUERY_BATCH]
            results = retriever.search_many([t for _, t in part], top_k, min_score=min_score)
            for (qid, _), hits in zip(part, results):
                echo_json({"query_id": qid, "results": [h.as_dict() for h in hits]})
        return
    assert query is not None
    encoded = prefetch.result() if prefetch is not None else None
    hits = retriever.search_encoded(query, encoded[1], encoded[0], top_k, min_score=min_score) if encoded else None
    if prefetch is not None:
        log.info("query encoded %s", "in a forked child" if hits is not None else
                 "in-process (the child skipped or failed)")
    if hits is None:
        hits = retriever.search(query, top_k, min_score=min_score)
    if as_json:
        echo_json({"query": query, "results": [h.as_dict() for h in hits]})
    else:
        print_hits(hits)


COMMANDS = [search]
