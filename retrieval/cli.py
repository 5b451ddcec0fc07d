"""The `retrieve` command line: a thin layer over :class:`retrieval.Retriever`.

Heavy modules (torch, sentence-transformers, FAISS, SQLAlchemy) are imported inside the
commands that need them, so `retrieve --help` and `retrieve config` start at once.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from functools import update_wrapper
from typing import Any

import click

from retrieval.errors import InvalidInputError, RetrievalError

EXAMPLES = """
\b
Examples:
  retrieve init
  retrieve ingest products.jsonl
  retrieve ingest --format csv --id-field sku --text-field title --text-field body items.csv
  retrieve search "What are good shoes for jogging?" -k 3
  retrieve search --queries queries.txt > results.jsonl
  retrieve status
  retrieve reindex --model ./my-other-model
"""


class RetrieveGroup(click.Group):
    """Turns library errors into one line on stderr and an exit status (tracebacks with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidInputError as exc:
            if _debug(ctx):
                raise
            for problem in exc.problems:
                click.echo(problem, err=True)
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except RetrievalError as exc:
            if _debug(ctx):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.obj and ctx.obj.get("debug"))


@click.group(cls=RetrieveGroup, epilog=EXAMPLES)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="RETRIEVE_CONFIG",
              help="Config file (default ./config.yaml if present). Env: RETRIEVE_CONFIG.")
@click.option("--database-url", help="SQLAlchemy database URL, e.g. sqlite:///data/retrieval.db.")
@click.option("--index-dir", help="Folder of the FAISS index versions.")
@click.option("--model", help="Model name or local model directory.")
@click.option("--device", help="cpu, cuda, cuda:N, mps or auto.")
@click.option("--batch-size", type=int, help="Texts per encoder batch.")
@click.option("--backend", type=click.Choice(["auto", "torch", "onnx", "openvino"]),
              help="Encoder runtime (default auto: the fastest that passed the quality gate here).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "int8"]), help="Encoder precision (default auto).")
@click.option("--threads", type=int, help="Encoder threads (default: the physical cores).")
@click.option("--index-type", help="flat (exact, default) or hnsw.")
@click.option("--no-progress", is_flag=True, default=False, help="Hide progress bars.")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (to stderr).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="retrieval")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, database_url: str | None, index_dir: str | None, model: str | None,
        device: str | None, batch_size: int | None, backend: str | None, precision: str | None, threads: int | None,
        index_type: str | None, no_progress: bool, verbose: bool, debug: bool) -> None:
    """Semantic search over your documents: a database as the source of truth and a
    FAISS index derived from it."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj.update(
        debug=debug,
        config_path=config_path,
        overrides={"database_url": database_url, "index_dir": index_dir, "model": model, "device": device,
                   "batch_size": batch_size, "backend": backend, "precision": precision, "threads": threads,
                   "index_type": index_type, "progress": False if no_progress else None},
    )


def _settings(ctx: click.Context) -> Any:
    from retrieval.config import load_settings

    obj = ctx.find_root().obj
    if "settings" not in obj:
        obj["settings"] = load_settings(obj["config_path"], overrides=obj["overrides"])
    return obj["settings"]


def pass_retriever(f: Callable[..., Any]) -> Callable[..., Any]:
    """Build the Retriever from the effective settings and pass it as the first argument."""

    @click.pass_context
    def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
        from retrieval.retriever import Retriever

        settings = _settings(ctx)
        retriever = Retriever.from_settings(settings)
        ctx.call_on_close(retriever.close)
        return ctx.invoke(f, retriever, *args, **kwargs)

    return update_wrapper(wrapper, f)


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, default=str))


def _shorten(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


@cli.command()
@pass_retriever
def init(retriever: Any) -> None:
    """Create (or upgrade) the database schema and the index folder.

    \b
        retrieve init
    """
    retriever.current_index()
    s = retriever.settings
    click.echo(f"Database ready: {s.database_url}")
    click.echo(f"Index ready:    {s.index_dir}")


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def config_cmd(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings and where each one came from.

    \b
        retrieve config
        RETRIEVE_BATCH_SIZE=128 retrieve --model ./my-model config
    """
    settings = _settings(ctx)
    rows = settings.describe()
    if as_json:
        _echo_json({name: {"value": value, "source": source} for name, value, source in rows})
        return
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        shown = "null" if value is None else value
        click.echo(f"{name:<{width}}  {shown!s:<40}  ({source})")


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv", "text"]),
              help="Input format (default: from each file's extension; sniffed for -).")
@click.option("--id-field", default="id", show_default=True, help="Field holding the document id.")
@click.option("--text-field", "text_fields", multiple=True,
              help="Field(s) holding the text; repeat to join several (e.g. title and body). Default: text.")
@click.option("--metadata-field", "metadata_fields", multiple=True,
              help="Field(s) kept as metadata; repeatable. Default: every other field.")
@click.option("--skip-invalid", is_flag=True, help="Store the valid records even when some are invalid.")
@click.option("--no-sync", is_flag=True,
              help="Only store the documents; a running worker (or `retrieve sync`) embeds and indexes them.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@pass_retriever
def ingest(retriever: Any, files: tuple[str, ...], fmt: str | None, id_field: str, text_fields: tuple[str, ...],
           metadata_fields: tuple[str, ...], skip_invalid: bool, no_sync: bool, as_json: bool) -> None:
    """Add or update documents from FILES (JSONL, JSON array, CSV or plain text; - for stdin).

    Every record is validated before anything is written. Documents are matched by id:
    new ones are added, changed ones updated, unchanged ones skipped (not re-embedded).
    When the command returns, searches see the new documents.

    \b
        retrieve ingest products.jsonl
        cat notes.txt | retrieve ingest --format text -
        retrieve ingest --id-field _id --text-field title --text-field text corpus.jsonl
        retrieve ingest --no-sync big-dump.jsonl   # a running worker indexes it
    """
    report = retriever.ingest_files(
        list(files),
        fmt=fmt,
        id_field=id_field,
        text_fields=text_fields or ("text",),
        metadata_fields=metadata_fields or None,
        skip_invalid=skip_invalid,
        stdin=None,
        sync=not no_sync,
    )
    for problem in report.problems:
        click.echo(f"skipped {problem}", err=True)
    if as_json:
        _echo_json(report.as_dict())
        return
    click.echo(
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.invalid} invalid "
        f"in {report.seconds:.1f}s ({report.docs_per_second:,.0f} documents/s)"
    )


def _print_hits(hits: list[Any]) -> None:
    if not hits:
        click.echo("No results.")
    for rank, hit in enumerate(hits, 1):
        meta = f"  {json.dumps(hit.metadata, ensure_ascii=False)}" if hit.metadata else ""
        click.echo(f"{rank:>2}. {hit.score:.4f}  {hit.id}  {_shorten(hit.text)}{meta}")


def _read_queries(path: str) -> list[tuple[str, str]]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    out: list[tuple[str, str]] = []
    with stream:
        for lineno, line in enumerate(stream, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise RetrievalError(f"{path}:{lineno}: malformed JSON: {exc}") from exc
                qid, text = obj.get("id", obj.get("_id", str(lineno))), obj.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise RetrievalError(f"{path}:{lineno}: missing or empty text")
                out.append((str(qid), text))
            else:
                out.append((str(lineno), line))
    return out


@cli.command()
@click.argument("query", required=False)
@click.option("-k", "--top-k", type=int, help="Number of results (default: search_k setting, 5).")
@click.option("--min-score", type=float, help="Leave out results scoring below this cosine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object with a results list.")
@click.option("--queries", "queries_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Batch mode: one query per line (or JSONL with id and text); one JSON line per query.")
@click.option("--server", envvar="RETRIEVE_SERVER", metavar="URL",
              help="Ask a running `retrieve serve` at URL instead of loading the model here. Env: RETRIEVE_SERVER.")
@click.pass_context
def search(ctx: click.Context, query: str | None, top_k: int | None, min_score: float | None, as_json: bool,
           queries_file: str | None, server: str | None) -> None:
    """Show the documents closest in meaning to QUERY.

    \b
        retrieve search "What are good shoes for jogging?"
        retrieve search "refund policy" -k 10 --min-score 0.3 --json
        retrieve search --queries queries.jsonl > results.jsonl
        retrieve search --server http://127.0.0.1:8000 "refund policy"
    """
    retriever: Any
    prefetch = None
    if server:
        # Only httpx is imported: the service holds the model, so this answers in milliseconds.
        from retrieval.serve_cmd import RemoteSearcher

        retriever = RemoteSearcher(server, api_key=_settings(ctx).api_key)
    else:
        # In a fresh process the query is encoded in a forked child while SQLAlchemy and
        # FAISS import and the index is read (see retrieval.prefetch).
        settings = _settings(ctx)
        if query and not queries_file:
            from retrieval.prefetch import start as start_prefetch

            prefetch = start_prefetch(settings, query)
            if prefetch is not None:
                ctx.call_on_close(prefetch.close)
        from retrieval.retriever import Retriever

        retriever = Retriever.from_settings(settings)
    ctx.call_on_close(retriever.close)
    if queries_file:
        if query:
            raise click.UsageError("give either QUERY or --queries, not both")
        queries = _read_queries(queries_file)
        batch = 256
        for start in range(0, len(queries), batch):
            part = queries[start : start + batch]
            results = retriever.search_many([t for _, t in part], top_k, min_score=min_score)
            for (qid, _), hits in zip(part, results):
                _echo_json({"query_id": qid, "results": [h.as_dict() for h in hits]})
        return
    if not query:
        raise click.UsageError("give a QUERY (or --queries FILE)")
    encoded = prefetch.result() if prefetch is not None else None
    hits = retriever.search_encoded(query, encoded[1], encoded[0], top_k, min_score=min_score) if encoded else None
    if prefetch is not None:
        logging.getLogger("retrieval").info("query encoded %s", "in a forked child" if hits is not None else
                                            "in-process (the child skipped or failed)")
    if hits is None:
        hits = retriever.search(query, top_k, min_score=min_score)
    if as_json:
        _echo_json({"query": query, "results": [h.as_dict() for h in hits]})
    else:
        _print_hits(hits)


@cli.command()
@click.argument("external_id")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_retriever
def get(retriever: Any, external_id: str, as_json: bool) -> None:
    """Show one document by its id.

    \b
        retrieve get p002
    """
    hit = retriever.get(external_id)
    if as_json:
        _echo_json({"id": hit.id, "text": hit.text, "metadata": hit.metadata})
    else:
        click.echo(f"id:       {hit.id}\ntext:     {hit.text}\nmetadata: {json.dumps(hit.metadata, ensure_ascii=False)}")


@cli.command()
@click.argument("ids", nargs=-1)
@click.option("--file", "id_file", type=click.Path(dir_okay=False, allow_dash=True), help="File with one id per line.")
@pass_retriever
def delete(retriever: Any, ids: tuple[str, ...], id_file: str | None) -> None:
    """Delete documents by id (exit status 1 if some did not exist).

    \b
        retrieve delete p001 p002
        retrieve delete --file stale-ids.txt
    """
    wanted = list(ids)
    if id_file:
        stream = sys.stdin if id_file == "-" else open(id_file, encoding="utf-8")
        with stream:
            wanted += [line.strip() for line in stream if line.strip()]
    if not wanted:
        raise click.UsageError("give ids to delete, or --file")
    deleted, missing = retriever.delete(wanted)
    click.echo(f"{deleted} deleted")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        click.echo(f"Error: not found: {shown}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_retriever
def sync(retriever: Any, as_json: bool) -> None:
    """Apply pending database changes to the index (embedding what is new).

    \b
        retrieve sync
    """
    report = retriever.sync()
    if as_json:
        _echo_json(report.as_dict())
        return
    if report.full:
        click.echo(f"Built the index from scratch: {report.added} documents, {report.embedded} embedded, version {report.version}")
    elif report.changes == 0:
        click.echo(f"Up to date (version {report.version}).")
    else:
        click.echo(f"{report.changes} changed documents applied ({report.embedded} embedded, {report.added} indexed, "
                   f"{report.removed} removed) in {report.seconds:.2f}s; version {report.version}")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_retriever
def status(retriever: Any, as_json: bool) -> None:
    """Show documents, embeddings, index version, pending changes and sizes.

    \b
        retrieve status --json
    """
    st = retriever.status()
    if as_json:
        _echo_json(st)
        return
    rows = [
        ("documents", st["documents"]),
        ("embedded", f"{st['embedded']} (current model)"),
        ("indexed", st["indexed"]),
        ("pending changes", st["pending_changes"]),
        ("model", f"{st['model']}  [{st['model_key']}]"),
        ("index", f"{st['index_type']}, version {st['index_version'] or '(none yet)'}"),
        ("database", f"{st['database']}  ({_size(st['database_bytes'])})"),
        ("index folder", f"{st['index_dir']}  ({_size(st['index_bytes'])})"),
    ]
    if "backend" in st:
        rows.append(("encoder", f"{st['backend']} {st['precision']}" + (f" ({st['backend_note']})" if st.get("backend_note") else "")))
    rec = st["reclaimable"]
    rows.append(("reclaimable", f"{_size(rec['unused_embedding_bytes'] + rec['free_database_bytes'] + rec['old_index_version_bytes'])}"
                 f" ({rec['unused_embeddings']} unused embeddings; `retrieve compact`)"))
    w = st.get("worker")
    if w and w.get("running"):
        rows.append(("worker", f"running, pid {w['pid']}, last sync {w['last_sync'] or 'not yet'}"))
    else:
        rows.append(("worker", "not running" + (f" (last: pid {w['pid']}, last sync {w['last_sync']})" if w else "")))
    rows.append(("lag", f"{st['pending_changes']} changes, {st['lag_seconds']:.0f} s"))
    if not st["model_matches_index"]:
        rows.append(("WARNING", f"index was built with {st['index_model_key']}; run `retrieve reindex`"))
    for name, value in rows:
        click.echo(f"{name:<16} {value}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_retriever
def verify(retriever: Any, as_json: bool) -> None:
    """Check that the index agrees exactly with the database (exit 1 on drift).

    \b
        retrieve verify
    """
    report = retriever.verify()
    if as_json:
        _echo_json(report.as_dict())
    else:
        for problem in report.problems:
            click.echo(problem)
        state = "OK" if report.ok else f"DRIFT: {len(report.problems)} differences"
        click.echo(f"{state}: {report.documents} documents, {report.indexed} indexed, {report.pending} pending changes")
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--model", "new_model", help="Re-embed everything with this model, then switch to it.")
@click.option("--if-needed", is_flag=True,
              help="Rebuild only when worth it (model or index type changed, index damaged); say why or why not.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_retriever
def reindex(retriever: Any, new_model: str | None, if_needed: bool, as_json: bool) -> None:
    """Rebuild the index from stored embeddings (nothing is re-embedded).

    With --model, every document is embedded with the new model into a new index; the
    old index keeps answering searches until the new one is complete. With --if-needed
    (for schedules), it rebuilds only when that is worth it, and says why or why not.

    \b
        retrieve reindex
        retrieve reindex --if-needed
        retrieve reindex --model ./models/other-model
    """
    if if_needed:
        if new_model:
            raise click.UsageError("--if-needed and --model do not go together")
        from retrieval.maintenance import reindex_needed

        decision = reindex_needed(retriever)
        if not decision.needed:
            if as_json:
                _echo_json({"reindexed": False, "reason": decision.reason})
            else:
                click.echo(f"No reindex needed: {decision.reason}.")
            return
        click.echo(f"Reindexing: {decision.reason}.", err=as_json)
    t0 = time.perf_counter()
    report = retriever.reindex(new_model)
    if as_json:
        _echo_json(report.as_dict())
        return
    click.echo(f"Reindexed {report.added} documents ({report.embedded} embedded) in {time.perf_counter() - t0:.1f}s; "
               f"version {report.version}")
    if new_model and new_model != retriever.settings.model:
        click.echo(f"The index now uses {new_model}: set `model: {new_model}` in your config (or RETRIEVE_MODEL) "
                   "so that searches use it too.")


if __name__ != "__main__":  # see the end of this file
    from retrieval.eval_cmd import eval_cmd  # noqa: E402
    cli.add_command(eval_cmd)
    from retrieval.model_cmd import model  # noqa: E402
    cli.add_command(model)
    from retrieval.selftest_cmd import selftest  # noqa: E402
    cli.add_command(selftest)


@cli.command()
@click.option("--poll-interval", type=float, help="Seconds between checks of the change log (worker_poll_interval).")
@click.option("--max-batch", type=int, help="Most change-log entries per published version (worker_max_batch).")
@click.option("--wait", is_flag=True, help="If another worker holds the store, wait for it instead of exiting.")
@click.option("--once", is_flag=True, help="Run one sync cycle and exit.")
@click.option("--reindex-every", type=float, metavar="HOURS", help="Check `reindex --if-needed` every HOURS.")
@click.option("--reindex-at", metavar="HH:MM", help="Check `reindex --if-needed` daily at this local time.")
@pass_retriever
def worker(retriever: Any, poll_interval: float | None, max_batch: int | None, wait: bool, once: bool,
           reindex_every: float | None, reindex_at: str | None) -> None:
    """Keep the index in sync with the database until stopped.

    Follows the change log (writes from any program, including plain SQL), embeds new
    and changed documents, drops deleted ones, publishes index versions in batches, and
    collects garbage. One worker per store. SIGTERM or Ctrl-C finishes the current batch,
    publishes it, and exits 0. Logs are key=value lines on stderr.

    \b
        retrieve worker
        retrieve worker --poll-interval 0.5 --reindex-at 03:30
    """
    from retrieval.worker import Schedule, Worker, parse_daily

    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("retrieval").setLevel(logging.INFO)
    schedule = Schedule(every=reindex_every * 3600 if reindex_every else None,
                        daily=parse_daily(reindex_at) if reindex_at else None)
    w = Worker(retriever, poll_interval=poll_interval, max_batch=max_batch, schedule=schedule)
    w.install_signal_handlers()
    w.run(wait=wait, once=once)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@pass_retriever
def compact(retriever: Any, as_json: bool) -> None:
    """Give space back: unused embeddings (deleted documents, old texts, other models),
    applied change-log rows, old index versions, and the database file's free pages.

    \b
        retrieve compact
    """
    from retrieval.maintenance import compact as run_compact

    before = retriever.status()
    result = run_compact(retriever)
    after = retriever.status()
    result["database_bytes_before"] = before["database_bytes"]
    result["database_bytes_after"] = after["database_bytes"]
    if as_json:
        _echo_json(result)
        return
    click.echo(f"Removed {result['embeddings_removed']} unused embeddings and {result['changes_removed']} applied "
               f"change-log rows; database {_size(before['database_bytes'])} -> {_size(after['database_bytes'])}, "
               f"index versions freed {_size(result['index_bytes_freed'])}.")


from retrieval.serve_cmd import serve  # noqa: E402
cli.add_command(serve)


def main() -> None:
    cli(prog_name="retrieve")


if __name__ == "__main__":
    # `python -m retrieval.cli`: run the importable module rather than this __main__
    # copy, so that commands defined in other modules register against one group.
    from retrieval.cli import main as _main

    _main()
