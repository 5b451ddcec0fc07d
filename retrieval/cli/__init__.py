"""The `retrieve` command line: a thin layer over :class:`retrieval.Retriever`.

The root group (here) reads the options every command shares into a
:class:`~retrieval.cli.common.CliState`; each command group lives in a module of its own
and receives that state or a Retriever through the decorators in
:mod:`retrieval.cli.common`. No other part of the package imports click.
"""

from __future__ import annotations

import click

from retrieval.cli import backup, documents, evaluate, index, mcp, model, search, selftest, serve, status, worker
from retrieval.cli.common import CliState, RetrieveGroup, setup_logging
from retrieval.config import BACKENDS, INDEX_TYPES, PRECISIONS

EXAMPLES = """
\b
Examples:
  retrieve init
  retrieve ingest --sample
  retrieve ingest products.jsonl
  retrieve ingest --format csv --id-field sku --text-field title --text-field body items.csv
  retrieve search "What are good shoes for jogging?" -k 3
  retrieve search --queries queries.txt > results.jsonl
  retrieve status
  retrieve backup backups/today
  retrieve reindex --model ./my-other-model
"""


@click.group(cls=RetrieveGroup, epilog=EXAMPLES)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="RETRIEVE_CONFIG",
              help="Config file (default ./config.yaml if present). Env: RETRIEVE_CONFIG.")
@click.option("--database-url", help="SQLAlchemy database URL, e.g. sqlite:///data/retrieval.db.")
@click.option("--index-dir", help="Folder of the FAISS index versions.")
@click.option("--model", help="Model name or local model directory (hash-384: the test encoder, not a language model).")
@click.option("--device", help="cpu, cuda, cuda:N, mps or auto.")
@click.option("--batch-size", type=int, help="Texts per encoder batch.")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="Encoder runtime (default auto: the fastest that passed the quality gate here).")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Encoder precision (default auto).")
@click.option("--threads", type=int, help="Encoder threads (default: the physical cores).")
@click.option("--index-type", type=click.Choice(INDEX_TYPES),
              help="auto (default: small segments exact, large ones HNSW), flat (every segment exact) or hnsw.")
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
    ctx.call_on_close(setup_logging(verbose))
    ctx.obj = CliState(
        config_path=config_path,
        debug=debug,
        verbose=verbose,
        overrides={"database_url": database_url, "index_dir": index_dir, "model": model, "device": device,
                   "batch_size": batch_size, "backend": backend, "precision": precision, "threads": threads,
                   "index_type": index_type, "progress": False if no_progress else None},
    )


for _module in (documents, search, index, status, worker, backup, evaluate, model, selftest, serve, mcp):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="retrieve")


__all__ = ["cli", "main"]
