"""`retrieve search`: the documents closest in meaning to a query, from this machine's
store or from a running `retrieve serve`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import click

from retrieval.cli.common import CliState, echo_json, json_option, pass_state, shorten
from retrieval.config import SEARCH_MODES
from retrieval.errors import RetrievalError

if TYPE_CHECKING:
    from retrieval.retriever import Retriever
    from retrieval.search.searcher import Searcher

# Queries per search_many call in batch mode: bounds memory, keeps encoder batches full.
QUERY_BATCH = 256


def _marked(snippet: str, highlights: Iterable[Any]) -> str:
    """A snippet with its matched terms in [brackets] (bold on a terminal)."""
    out, last = [], 0
    for start, end in highlights:
        out.append(snippet[last:start])
        out.append(click.style(f"[{snippet[start:end]}]", bold=True))
        last = end
    out.append(snippet[last:])
    return " ".join("".join(out).split())


def hit_lines(hits: Iterable[Any]) -> list[str]:
    """How a search's results print: rank, score, id, text (or the keyword snippet, matched
    terms marked) and metadata, one line each; hybrid results add each list's rank."""
    lines = []
    for rank, hit in enumerate(hits, 1):
        meta = f"  {json.dumps(hit.metadata, ensure_ascii=False)}" if hit.metadata else ""
        if hit.snippet:
            body = _marked(hit.snippet, hit.highlights)
        elif hit.passage:  # a long document: the passage that scored, not its opening
            p = hit.passage
            body = f"[passage {p['ordinal'] + 1}/{p['of']}] " + shorten(p["text"])
        else:
            body = shorten(hit.text)
        ranks = ""
        if hit.mode == "hybrid":
            ranks = f"  (dense #{hit.dense_rank or '-'}, keyword #{hit.keyword_rank or '-'})"
        lines.append(f"{rank:>2}. {hit.score:.4f}  {hit.id}  {body}{meta}{ranks}")
    return lines or ["No results."]


def where_option(f: Any) -> Any:
    """``--where`` (repeatable), handed to the command as one parsed filter (or None)."""

    def parse(_ctx: click.Context, _param: click.Parameter, items: tuple[str, ...]) -> Any:
        from retrieval.filters import from_cli

        return from_cli(items)

    return click.option("--where", "where", multiple=True, metavar="FILTER", callback=parse,
                        help="Metadata filter: JSON such as '{\"price\": {\"$lt\": 100}}', or a shorthand "
                             "category=footwear, 'price<100', 'tag!=x'. Repeat to AND them.")(f)


def server_option(f: Any) -> Any:
    return click.option("--server", envvar="RETRIEVE_SERVER", metavar="URL",
                        help="Ask a running `retrieve serve` at URL instead of loading the model here. "
                             "Env: RETRIEVE_SERVER.")(f)


def open_searcher(ctx: click.Context, state: CliState, server: str | None) -> Searcher:
    """The store to search: a running `retrieve serve` at ``server`` (only httpx is
    imported, so this answers in milliseconds), or this machine's. Closed with the command."""
    searcher: Searcher
    if server:
        from retrieval.client import RemoteSearcher

        searcher = RemoteSearcher(server, api_key=state.settings.serve.api_key)
    else:
        from retrieval.retriever import Retriever

        searcher = Retriever.from_settings(state.settings)
    ctx.call_on_close(searcher.close)
    return searcher


def print_hits(hits: Iterable[Any]) -> None:
    for line in hit_lines(hits):
        click.echo(line)


@click.command()
@click.argument("query", required=False)
@click.option("-k", "--top-k", type=int, help="Number of results (default: search_k setting, 5).")
@click.option("--min-score", type=float, help="Leave out results scoring below this (a cosine in dense mode).")
@json_option
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Batch mode: one query per line (or JSONL with id and text); one JSON line per query.")
@server_option
@where_option
@click.option("--mode", type=click.Choice(SEARCH_MODES), default=SEARCH_MODES[0], show_default=True,
              help="dense: by meaning; keyword: BM25 over the words; hybrid: both, fused by reciprocal rank.")
@click.option("--alpha", type=click.FloatRange(0, 1),
              help="Hybrid: weigh normalised dense scores by ALPHA and keyword ones by 1-ALPHA instead of RRF.")
@click.option("--plus", multiple=True, metavar="TEXT", help="Add this text's vector to the query's (repeatable).")
@click.option("--minus", multiple=True, metavar="TEXT", help="Subtract this text's vector (repeatable).")
@click.option("--like", multiple=True, metavar="ID", help="Add this stored document's vector (repeatable).")
@click.option("--unlike", multiple=True, metavar="ID", help="Subtract this stored document's vector (repeatable).")
@click.option("--include-examples", is_flag=True, help="Let the --like/--unlike documents appear in the results.")
@pass_state
@click.pass_context
def search(ctx: click.Context, state: CliState, query: str | None, top_k: int | None, min_score: float | None,
           as_json: bool, queries_file: str | None, server: str | None, where: Any, mode: str,
           alpha: float | None, plus: tuple[str, ...], minus: tuple[str, ...], like: tuple[str, ...],
           unlike: tuple[str, ...], include_examples: bool) -> None:
    """Show the documents closest in meaning to QUERY.

    \b
        retrieve search "What are good shoes for jogging?"
        retrieve search "refund policy" -k 10 --min-score 0.3 --json
        retrieve search "trail shoes" --where category=footwear --where 'price<100'
        retrieve search "gore-tex boots" --mode hybrid
        retrieve search "king" --minus "man" --plus "woman"
        retrieve search --like sku-123 --unlike sku-456
        retrieve search --queries queries.jsonl > results.jsonl
        retrieve search --server http://127.0.0.1:8000 "refund policy"
    """
    arithmetic = {"plus": plus, "minus": minus, "like": like, "unlike": unlike}
    if queries_file and query:
        raise click.UsageError("give either QUERY or --queries, not both")
    if not queries_file and not query and not (like or plus):
        raise click.UsageError("give a QUERY (or --queries FILE, or --like ID)")
    if queries_file and any(arithmetic.values()):
        raise click.UsageError("--plus, --minus, --like and --unlike work with one QUERY, not --queries")
    # In a fresh process the query is encoded in a forked child while SQLAlchemy and
    # FAISS import and the index is read (see retrieval.cli.prefetch).
    early = None
    if not server and query and not queries_file and mode == "dense" and not any(arithmetic.values()):
        from retrieval.cli.prefetch import start

        early = start(state.settings, query)
        if early is not None:
            ctx.call_on_close(early.close)
    searcher = open_searcher(ctx, state, server)
    options = {"min_score": min_score, "where": where, "mode": mode, "alpha": alpha}
    if queries_file:
        _search_batch(searcher, queries_file, top_k, options)
        return
    hits = None
    if early is not None and query is not None:
        hits = early.hits(cast("Retriever", searcher), query, top_k, min_score=min_score, where=where)
    if hits is None:
        hits = searcher.search(query, top_k, min_score=min_score, where=where, mode=mode, alpha=alpha, plus=plus,
                               minus=minus, like=like, unlike=unlike, include_examples=include_examples)
    if as_json:
        echo_json({"query": query, "results": [h.as_dict() for h in hits]})
    else:
        print_hits(hits)


def _search_batch(searcher: Searcher, path: str, k: int | None, options: dict[str, Any]) -> None:
    """``--queries``: one JSON line of results per query, searched in batches."""
    from retrieval.readers import read_queries

    try:
        queries = read_queries(path)
    except (OSError, ValueError) as exc:
        raise RetrievalError(str(exc)) from exc
    for start in range(0, len(queries), QUERY_BATCH):
        part = queries[start : start + QUERY_BATCH]
        results = searcher.search_many([t for _, t in part], k, **options)
        for (qid, _), hits in zip(part, results):
            echo_json({"query_id": qid, "results": [h.as_dict() for h in hits]})


@click.command()
@click.argument("doc_id", metavar="ID")
@click.option("-k", "--top-k", type=int, help="Number of results (default: search_k setting, 5).")
@click.option("--min-score", type=float, help="Leave out results scoring below this (a cosine in dense mode).")
@where_option
@json_option
@server_option
@pass_state
@click.pass_context
def similar(ctx: click.Context, state: CliState, doc_id: str, top_k: int | None, min_score: float | None,
            where: Any, as_json: bool, server: str | None) -> None:
    """Show the documents nearest to the stored document ID (more like this).

    Uses ID's stored vector (nothing is re-embedded) and leaves ID itself out.

    \b
        retrieve similar sku-123 -k 10
        retrieve similar sku-123 --where category=footwear --json
    """
    hits = open_searcher(ctx, state, server).similar(doc_id, top_k, min_score=min_score, where=where)
    if as_json:
        echo_json({"like": doc_id, "results": [h.as_dict() for h in hits]})
    else:
        print_hits(hits)


COMMANDS = [search, similar]
