"""Documents in and out: `retrieve init`, `ingest`, `get` and `delete`."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from retrieval.cli.common import emit, json_option, pass_retriever, warn


@click.command()
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


@click.command()
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
@json_option
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
    if report.setup_seconds:
        warn(f"preparing the encoder for its first use took {report.setup_seconds:.1f}s (model export and checks, "
             "once: cached for later runs; not counted in the rate below)")
    emit(as_json, report.as_dict(), lambda: [
        f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, {report.invalid} invalid "
        f"in {report.seconds:.1f}s ({report.docs_per_second:,.0f} documents/s)"
    ])


@click.command()
@click.argument("external_id")
@json_option
@pass_retriever
def get(retriever: Any, external_id: str, as_json: bool) -> None:
    """Show one document by its id.

    \b
        retrieve get p002
    """
    hit = retriever.get(external_id)
    emit(as_json, {"id": hit.id, "text": hit.text, "metadata": hit.metadata}, lambda: [
        f"id:       {hit.id}", f"text:     {hit.text}", f"metadata: {json.dumps(hit.metadata, ensure_ascii=False)}"
    ])


@click.command()
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


COMMANDS = [init, ingest, get, delete]
