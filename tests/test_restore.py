"""A database that moves backwards (a restore, another store's copy) is noticed: the index
is rebuilt from the stored vectors before it could serve a stale or deleted document, and
a new document never inherits an old row's vector. `retrieve backup` and `retrieve
restore` take and put back a consistent copy of database and index."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import REPO, admin_connect, write_jsonl
from retrieval.cli import cli

SAMPLE = REPO / "retrieval" / "sample" / "products.jsonl"


def _ids(result: Any) -> list[str]:
    assert result.exit_code == 0, result.output
    return [h["id"] for h in json.loads(result.stdout)["results"]]


def _sqlite_backup(db: Path, dest: Path) -> None:
    """What `sqlite3 retrieval.db ".backup dest"` does: SQLite's online backup API."""
    src, dst = sqlite3.connect(db), sqlite3.connect(dest)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def test_a_restored_database_is_noticed_and_the_index_rebuilt(real_store_env: dict[str, str], tmp_path: Path) -> None:
    """The new user's scenario: a backup of retrieval.db copied back over it."""
    runner = CliRunner()
    db = Path(real_store_env["RETRIEVE_DATABASE_URL"].removeprefix("sqlite:///"))
    assert runner.invoke(cli, ["ingest", str(SAMPLE)]).exit_code == 0
    _sqlite_backup(db, tmp_path / "backup.db")
    bike = write_jsonl(tmp_path / "bike.jsonl", [{"id": "new1", "text": "A lightweight carbon road bike with "
                                                  "twenty-two gears for racing."}])
    assert runner.invoke(cli, ["ingest", str(bike)]).exit_code == 0
    assert runner.invoke(cli, ["delete", "p002"]).exit_code == 0
    assert _ids(runner.invoke(cli, ["search", "road bike", "-k", "1", "--json"])) == ["new1"]

    shutil.copyfile(tmp_path / "backup.db", db)  # the restore: new1 never was, p002 is back

    status = runner.invoke(cli, ["status"])
    assert status.exit_code == 0 and "WARNING" in status.output and "does not follow this database" in status.output
    verify = runner.invoke(cli, ["verify"])
    assert verify.exit_code == 1 and "does not follow this database" in verify.output
    # The first search notices it, says so in one line, rebuilds from the stored vectors
    # (nothing is re-embedded) and answers from the restored database.
    jogging = runner.invoke(cli, ["search", "What are good shoes for jogging?", "-k", "3", "--json"])
    assert "rebuilding the index from the stored embeddings" in jogging.stderr
    assert _ids(jogging)[0] == "p002"
    assert "new1" not in _ids(runner.invoke(cli, ["search", "road bike", "-k", "5", "--json"]))
    assert runner.invoke(cli, ["sync"]).stdout.startswith("Up to date")
    status = runner.invoke(cli, ["status", "--json"])
    assert json.loads(status.stdout)["diverged"] is None and json.loads(status.stdout)["pending_changes"] == 0

    # A document stored now takes a new internal id: it does not inherit new1's vector.
    tea = write_jsonl(tmp_path / "tea.jsonl", [{"id": "tea", "text": "Ceramic teapot"}])
    assert runner.invoke(cli, ["ingest", str(tea)]).exit_code == 0
    assert _ids(runner.invoke(cli, ["search", "teapot", "-k", "1", "--json"])) == ["tea"]
    assert _ids(runner.invoke(cli, ["search", "road bike", "-k", "1", "--json"])) != ["tea"]
    with sqlite3.connect(db) as con:
        (tea_id,) = con.execute("SELECT id FROM documents WHERE external_id = 'tea'").fetchone()
        (most,) = con.execute("SELECT max(id) FROM documents WHERE external_id != 'tea'").fetchone()
    assert tea_id > most + 1  # new1's id (most + 1 before the restore) is not handed out again
    verify = runner.invoke(cli, ["verify"])
    assert verify.exit_code == 0 and verify.output.startswith("OK"), verify.output


@pytest.mark.both_databases
def test_a_database_behind_the_index_is_rebuilt_at_the_next_sync(make_retriever, db_backend: str,
                                                                   database_url: str, tmp_path: Path) -> None:
    """A restore on either database, found by a sync (the worker's path) rather than a search."""
    r = make_retriever()
    r.ingest([{"id": f"d{i}", "text": f"document number {i} about {w}"} for i, w in enumerate(["tea", "bikes", "maps"])])
    snapshot = _snapshot_database(db_backend, database_url, tmp_path, r)
    r.ingest([{"id": "late", "text": "a late document about kites"}])
    r.delete(["d1"])
    r.close()
    _restore_database(db_backend, database_url, tmp_path, snapshot)

    r = make_retriever()
    report = r.sync()
    assert report.full and report.added == 3  # rebuilt from the restored documents' stored vectors
    assert report.embedded == 0
    assert r.verify().ok
    r.ingest([{"id": "new", "text": "a new document about kites"}])
    hits = r.search("a late document about kites", k=4)
    assert "late" not in [h.id for h in hits] and hits[0].id == "new"
    assert r.verify().ok
    # Searches in a process that held the old index notice it as well.
    assert r.status()["diverged"] is None


def _snapshot_database(db_backend: str, url: str, tmp_path: Path, r: Any) -> Any:
    if db_backend == "sqlite":
        path = Path(url.removeprefix("sqlite:///"))
        _sqlite_backup(path, tmp_path / "snap.db")
        return tmp_path / "snap.db"
    from sqlalchemy.engine import make_url

    r.close()  # a template database must have no other connection
    name = make_url(url).database
    snap = f"{name}_snap"
    with admin_connect(make_url(url).set(database="postgres").render_as_string(hide_password=False)) as conn:
        conn.execute(f'CREATE DATABASE "{snap}" TEMPLATE "{name}"')
    return snap


def _restore_database(db_backend: str, url: str, tmp_path: Path, snapshot: Any) -> None:
    if db_backend == "sqlite":
        shutil.copyfile(snapshot, url.removeprefix("sqlite:///"))
        return
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    with admin_connect(make_url(url).set(database="postgres").render_as_string(hide_password=False)) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{snapshot}"')
        conn.execute(f'DROP DATABASE "{snapshot}"')


def test_an_index_pointed_at_another_stores_database_is_rebuilt(make_retriever, tmp_path: Path) -> None:
    """A copy of another store's database in place of this one's: same positions, other history."""
    a = make_retriever(tmp_path / "a")
    b = make_retriever(tmp_path / "b")
    a.ingest([{"id": "x", "text": "alpha beta"}, {"id": "y", "text": "gamma delta"}])
    b.ingest([{"id": "p", "text": "kites and strings"}, {"id": "q", "text": "paper boats"}])
    a.close()
    b.close()
    shutil.copyfile(tmp_path / "b" / "retrieval.db", tmp_path / "a" / "retrieval.db")
    a = make_retriever(tmp_path / "a")
    assert [h.id for h in a.search("kites and strings", k=1)] == ["p"]  # not x, which held row 1 before
    assert a.verify().ok
