"""`retrieve worker`: keep the index in sync with the database until stopped."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from retrieval.cli.common import CliState, pass_retriever, setup_logging

if TYPE_CHECKING:
    from retrieval.retriever import Retriever


@click.command()
@click.option("--poll-interval", type=float, help="Seconds between checks of the change log (worker_poll_interval).")
@click.option("--max-batch", type=int, help="Most change-log entries per published version (worker_max_batch).")
@click.option("--wait", is_flag=True, help="If another worker holds the store, wait for it instead of exiting.")
@click.option("--once", is_flag=True, help="Run one sync cycle and exit.")
@click.option("--reindex-every", type=float, metavar="HOURS", help="Check `reindex --if-needed` every HOURS.")
@click.option("--reindex-at", metavar="HH:MM", help="Check `reindex --if-needed` daily at this local time.")
@pass_retriever
def worker(retriever: Retriever, poll_interval: float | None, max_batch: int | None, wait: bool, once: bool,
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
    from retrieval.sync.worker import Schedule, Worker, parse_daily

    # A service's log: every line with its time and level, the worker's own at INFO.
    ctx = click.get_current_context()
    state = ctx.find_object(CliState)
    ctx.call_on_close(setup_logging(bool(state and state.verbose), timestamps=True))
    logger = logging.getLogger("retrieval")
    if not logger.isEnabledFor(logging.INFO):
        level = logger.level
        logger.setLevel(logging.INFO)
        ctx.call_on_close(lambda: logger.setLevel(level))
    schedule = Schedule(every=reindex_every * 3600 if reindex_every else None,
                        daily=parse_daily(reindex_at) if reindex_at else None)
    w = Worker(retriever, poll_interval=poll_interval, max_batch=max_batch, schedule=schedule)
    w.install_signal_handlers()
    w.run(wait=wait, once=once)


COMMANDS = [worker]
