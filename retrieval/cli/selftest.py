"""`retrieve selftest`: check this installation on a scratch copy of the configuration."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from retrieval.cli.common import CliState, emit, pass_state


@click.command("selftest")
@click.option("--crash", is_flag=True,
              help="Kill ingest, sync, worker and reindex processes at random moments and check that nothing is lost.")
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1), help="Kills to make.")
@click.option("--seed", type=int, help="Random seed, to repeat a run (default: random, printed in the report).")
@click.option("--restart", type=click.Choice(["process", "in-process"]), default="process", show_default=True,
              help="Run the `retrieve sync` after each kill as a new process, or in this one (faster: one model load).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@pass_state
@click.pass_context
def selftest(ctx: click.Context, state: CliState, crash: bool, iterations: int, seed: int | None, restart: str,
             as_json: bool) -> None:
    """Test this installation on a scratch store with the configured model and index settings.

    With --crash, real `retrieve` processes are killed with SIGKILL at random moments
    (while starting, embedding and publishing an index version); after each kill the
    store must hold every document reported as stored, `retrieve verify` must find no
    drift, and searches must find every document's latest text. Then a damaged index
    file, a disk filling up half-way through an index write, and a database locked by
    another writer are checked. Your database and index are not touched: everything
    happens in a temporary folder that is removed afterwards. Exit status 1 when a check
    fails. Each kill costs a few seconds of model loading.

    \b
        retrieve selftest --crash
        retrieve selftest --crash --iterations 50 --seed 7 --json
    """
    from retrieval import selftest as harness

    if not crash:
        raise click.UsageError("say what to test: --crash")
    with tempfile.TemporaryDirectory(prefix="retrieve-selftest-") as tmp:
        report = harness.run_chaos(Path(tmp) / "store", iterations=iterations, seed=seed, settings=state.settings,
                                   restart=restart, echo=lambda message: click.echo(message, err=True))
    emit(as_json, report.as_dict(), lambda: [report.table()])
    if not report.ok:
        ctx.exit(1)


COMMANDS = [selftest]
