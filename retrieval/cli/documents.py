"""Documents in and out: `retrieve init`, `ingest`, `embed`, `get` and `delete`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from retrieval.cli.common import emit, json_option, pass_retriever, warn
from retrieval.config import EXECUTORS

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

F = TypeVar("F", bound=Callable[..., Any])


def executor_options(f: F) -> F:
    """--executor and --address (both default to the settings)."""
    f = click.option("--address", help="The Ray cluster to use (default: the ray_address setting; none: start a "
                     "local one).")(f)
    return click.option("--executor", type=click.Choice(EXECUTORS),
                        help="Where to embed: here, or on a Ray cluster (default: the executor setting).")(f)


@click.command()
@pass_retriever
def init(retriever: Retriever) -> None:
    """Create (or upgrade) the database schema and the index folder.

    \b
        retrieve init
    """
    retriever.current_index()
    s = retriever.settings
    click.echo(f"Database ready: {s.store.database_url}")
    click.echo(f"Index ready:    {s.store.index_dir}")


@click.command()
@click.argument("files", nargs=-1)
@click.option("--sample", is_flag=True, help="Also ingest the bundled sample catalog (50 product descriptions).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "json", "csv", "text"]),
              help="Input format (default: from each file's extension; sniffed for -).")
@click.option("--id-field", default="id", show_default=True, help="Field holding the document id.")
@click.option("--text-field", "text_fields", multiple=True,
              help="Field(s) holding the text; repeat to join several (e.g. title and body). Default: text.")
@click.option("--metadata-field", "metadata_fields", multiple=True,
              help="Field(s) kept as metadata; repeatable. Default: every other field.")
@click.option("--csv-types", "csv_types", multiple=True, metavar="SPEC",
              help="How CSV cells become metadata: infer (default: cells written as numbers are numbers), text "
                   "(every cell a string), or COLUMN:TYPE with TYPE text, int, float, number, bool or json "
                   "(repeatable, or comma-separated).")
@click.option("--skip-invalid", is_flag=True, help="Store the valid records even when some are invalid.")
@click.option("--no-sync", is_flag=True,
              help="Only store the documents; a running worker (or `retrieve sync`) embeds and indexes them.")
@executor_options
@json_option
@pass_retriever
def ingest(retriever: Retriever, files: tuple[str, ...], sample: bool, fmt: str | None, id_field: str,
           text_fields: tuple[str, ...], metadata_fields: tuple[str, ...], csv_types: tuple[str, ...],
           skip_invalid: bool, no_sync: bool, executor: str | None, address: str | None, as_json: bool) -> None:
    """Add or update documents from FILES (JSONL, JSON array, CSV or plain text; - for stdin).

    Every record is validated before anything is written. Documents are matched by id:
    new ones are added, changed ones updated, unchanged ones skipped (not re-embedded).
    When the command returns, searches see the new documents and the index generation
    that holds them is published (unless --no-sync).

    \b
        retrieve ingest products.jsonl
        retrieve ingest --sample                   # the bundled sample catalog
        retrieve ingest --csv-types zip:text items.csv
        cat notes.txt | retrieve ingest --format text -
        retrieve ingest --id-field _id --text-field title --text-field text corpus.jsonl
        retrieve ingest --no-sync big-dump.jsonl   # a running worker indexes it
        retrieve ingest --executor ray corpus.jsonl  # embed on a (local) Ray cluster
    """
    sources = list(files)
    if sample:
        from retrieval.readers import SAMPLE_CATALOG

        sources.insert(0, str(SAMPLE_CATALOG))
    if not sources:
        raise click.UsageError("give FILES to ingest (- for stdin), or --sample")
    report = retriever.ingest_files(
        sources,
        fmt=fmt,
        id_field=id_field,
        text_fields=text_fields or ("text",),
        metadata_fields=metadata_fields or None,
        csv_types=csv_types or ("infer",),
        skip_invalid=skip_invalid,
        stdin=None,
        sync=not no_sync,
        executor=executor,
        address=address,
    )
    for problem in report.problems:
        click.echo(f"skipped {problem}", err=True)
    if report.setup_seconds:
        warn(f"preparing the encoder for its first use took {report.setup_seconds:.1f}s (model export and checks, "
             "once: cached for later runs; not counted in the rate below)")
    emit(as_json, report.as_dict(), lambda: [
        *([_embed_line(report.embed)] if report.embed and report.embed.documents else []),
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.invalid} invalid "
        f"in {report.seconds:.1f}s ({report.docs_per_second:,.0f} documents/s)",
        *([_passages_line(report.sync)] if report.sync and report.sync.long_documents else []),
    ])


def _passages_line(sync: Any) -> str:
    """What the index got for the documents published: passages, and how many documents
    were longer than the model's window (and so split)."""
    return (f"indexed {sync.added:,} documents as {sync.passages:,} passages; {sync.long_documents:,} "
            f"{'was' if sync.long_documents == 1 else 'were'} longer than the model's window and split "
            "(index.chunk_tokens)")


@click.command()
@executor_options
@click.option("--actors", type=click.IntRange(min=1), help="Ray actors (default: the ray_actors setting, else as many "
              "as the cluster's CPUs hold at ray_threads each).")
@click.option("--commit-every", type=click.IntRange(min=1),
              help="Texts embedded between two commits of their vectors, what a crash repeats at most (default 4096).")
@click.option("--sync", "then_sync", is_flag=True, help="Publish the documents to the index afterwards.")
@json_option
@pass_retriever
def embed(retriever: Retriever, executor: str | None, address: str | None, actors: int | None, commit_every: int | None,
          then_sync: bool, as_json: bool) -> None:
    """Embed every stored document that has no vector for the configured model.

    On a Ray cluster (--executor ray) the model loads once per actor; this process reads
    the database, hands out the texts and commits the vectors. Stopped at any point, run
    it again: it embeds only what has no stored vector. The index is not changed; `retrieve
    sync` (or a running worker) then publishes the documents from the stored vectors.

    \b
        retrieve embed --executor ray                      # a local Ray cluster
        retrieve embed --executor ray --address head:6379  # a running one
        retrieve embed --sync                              # here, then publish
    """
    from retrieval.sync.vectors import EMBED_CHUNK

    report = retriever.embed(executor=executor, address=address, actors=actors, commit_every=commit_every or EMBED_CHUNK)
    data = report.as_dict()
    synced = retriever.sync() if then_sync else None
    if synced is not None:
        data["sync"] = synced.as_dict()
    emit(as_json, data, lambda: [
        _embed_line(report) if report.documents else "Nothing to embed: every document has a vector for "
        f"{report.model_key}.",
        *([f"Published {synced.changes} changes ({synced.version})." if synced.published is not None
           else "The index was already up to date."] if synced is not None else
          ["Run `retrieve sync` (or a running worker does) to publish them."] if report.embedded else []),
    ])


def _embed_line(report: Any) -> str:
    workers = f"{report.workers} actor{'s' if report.workers != 1 else ''}" if report.executor == "ray" else "here"
    shared = f"; {report.shared:,} documents shared a text" if report.shared else ""
    return (f"Embedded {report.embedded:,} texts ({report.executor}, {workers}) in {report.seconds:.1f}s "
            f"({report.texts_per_second:,.0f} texts/s); start-up {report.startup_seconds:.1f}s, driver reads "
            f"{report.read_seconds:.1f}s, writes {report.write_seconds:.1f}s{shared}")


@click.command()
@click.argument("external_id")
@json_option
@pass_retriever
def get(retriever: Retriever, external_id: str, as_json: bool) -> None:
    """Show one document by its id.

    \b
        retrieve get p002
    """
    doc = retriever.get(external_id)
    emit(as_json, doc.as_dict(), lambda: [
        f"id:       {doc.id}", f"text:     {doc.text}", f"metadata: {json.dumps(doc.metadata, ensure_ascii=False)}"
    ])


@click.command()
@click.argument("ids", nargs=-1)
@click.option("--file", "id_file", type=click.Path(dir_okay=False, allow_dash=True), help="File with one id per line.")
@pass_retriever
def delete(retriever: Retriever, ids: tuple[str, ...], id_file: str | None) -> None:
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
    # A one-shot process: it publishes before it exits anyway, and a failure is this command's.
    deleted, missing = retriever.delete(wanted, wait=True)
    click.echo(f"{deleted} deleted")
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        click.echo(f"Error: not found: {shown}", err=True)
        sys.exit(1)


COMMANDS = [init, ingest, embed, get, delete]
