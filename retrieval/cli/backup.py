"""Copies of a store: `retrieve backup` and `retrieve restore`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from retrieval.cli.common import emit, json_option, pass_retriever, size

if TYPE_CHECKING:
    from retrieval.retriever import Retriever


@click.command()
@click.argument("dest", type=click.Path(file_okay=False))
@json_option
@pass_retriever
def backup(retriever: Retriever, dest: str, as_json: bool) -> None:
    """Copy the store into the new folder DEST while it is in use: the database (SQLite's
    online backup) and the index generation it matches, so that a restore serves at once.

    On PostgreSQL it copies the index, and the database is backed up with pg_dump.

    \b
        retrieve backup backups/2026-12-02
    """
    from retrieval.backup import backup as run_backup

    report = run_backup(retriever, dest)
    emit(as_json, report.as_dict(), lambda: [
        f"Backed up to {report.path}: "
        + (f"{report.documents} documents (database at change {report.database_seq}), " if report.documents is not None
           else "")
        + f"index {report.index_version or '(none)'} at change {report.index_seq}; {size(report.bytes)} in "
        f"{report.seconds:.1f}s",
        *[f"Note: {n}" for n in report.notes],
    ])


@click.command()
@click.argument("src", type=click.Path(file_okay=False, exists=True))
@json_option
@pass_retriever
def restore(retriever: Retriever, src: str, as_json: bool) -> None:
    """Replace the store's database and index by the backup in SRC (made by `retrieve
    backup`). Refused while a worker or `retrieve serve` keeps the store in sync.

    \b
        retrieve restore backups/2026-12-02
    """
    from retrieval.backup import restore as run_restore

    report = run_restore(retriever, src)
    emit(as_json, report.as_dict(), lambda: [
        *[f"Note: {n}" for n in report.notes],
        f"Restored {report.path}: "
        + (f"{report.documents} documents, " if report.documents is not None else "")
        + f"index {report.index_version or '(none)'}"
        + (" (rebuilt from the stored vectors)" if report.rebuilt else f" at change {report.index_seq}")
        + f" in {report.seconds:.1f}s",
    ])


COMMANDS = [backup, restore]
