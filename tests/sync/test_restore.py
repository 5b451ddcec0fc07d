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
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import REPO
from tests.fixtures.databases import admin_connect
from tests.fixtures.stores import write_jsonl

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


# -- retrieve backup / retrieve restore ------------------------------------------------


@pytest.mark.both_databases
def test_backup_then_restore_serves_the_backup_at_once(store_env: dict[str, str], db_backend: str,
                                                       tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(SAMPLE)]).exit_code == 0
    made = runner.invoke(cli, ["backup", str(tmp_path / "bk"), "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.stdout)
    assert info["index_version"] and info["index_seq"] == 50
    if db_backend == "postgresql":
        assert any("pg_dump" in n for n in info["notes"]) and not (tmp_path / "bk" / "retrieval.db").exists()
        return  # the database itself is pg_dump's; test_a_database_behind... covers a restored one
    assert info["documents"] == 50 and (tmp_path / "bk" / "retrieval.db").is_file()
    bike = write_jsonl(tmp_path / "bike.jsonl", [{"id": "new1", "text": "A carbon road bike"}])
    assert runner.invoke(cli, ["ingest", str(bike)]).exit_code == 0
    assert runner.invoke(cli, ["delete", "p002"]).exit_code == 0

    restored = runner.invoke(cli, ["restore", str(tmp_path / "bk")])
    assert restored.exit_code == 0 and "Restored" in restored.output and "rebuilt" not in restored.output, restored.output
    verify = runner.invoke(cli, ["verify"])
    assert verify.exit_code == 0 and verify.output.startswith("OK: 50 documents, 50 indexed, 0 pending"), verify.output
    shoes = "High-performance running shoes with advanced cushioning for marathon runners."
    assert _ids(runner.invoke(cli, ["search", shoes, "-k", "1", "--json"])) == ["p002"]
    assert runner.invoke(cli, ["get", "new1"]).exit_code == 1
    tea = write_jsonl(tmp_path / "tea.jsonl", [{"id": "tea", "text": "Ceramic teapot"}])
    assert runner.invoke(cli, ["ingest", str(tea)]).exit_code == 0
    assert _ids(runner.invoke(cli, ["search", "A carbon road bike", "-k", "1", "--json"])) != ["tea"]
    assert runner.invoke(cli, ["verify"]).exit_code == 0


def test_restore_refuses_what_it_should_and_changes_nothing(store_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(SAMPLE)]).exit_code == 0
    assert runner.invoke(cli, ["backup", str(tmp_path / "bk")]).exit_code == 0
    exists = runner.invoke(cli, ["backup", str(tmp_path / "bk")])
    assert exists.exit_code == 1 and "is not an empty folder" in exists.output

    not_backup = tmp_path / "junk"
    not_backup.mkdir()
    refused = runner.invoke(cli, ["restore", str(not_backup)])
    assert refused.exit_code == 1 and refused.output.strip() == f"Error: {not_backup} is not a backup (no BACKUP.json; " \
        "a backup interrupted before it finished has none)"

    damaged = tmp_path / "damaged"
    shutil.copytree(tmp_path / "bk", damaged)
    segment = next((damaged / "index" / "segments").glob("*.faiss"))
    segment.write_bytes(segment.read_bytes()[:-100])
    assert runner.invoke(cli, ["delete", "p001"]).exit_code == 0
    refused = runner.invoke(cli, ["restore", str(damaged)])
    assert refused.exit_code == 1 and "missing or truncated" in refused.output and "Traceback" not in refused.output
    assert runner.invoke(cli, ["get", "p001"]).exit_code == 1  # the store is as it was

    worker = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "worker"], env={**__import__("os").environ},
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = json.loads(runner.invoke(cli, ["status", "--json"]).stdout)
            if (status["worker"] or {}).get("running"):
                break
            time.sleep(0.2)
        busy = runner.invoke(cli, ["restore", str(tmp_path / "bk")])
        assert busy.exit_code == 3 and "stop it before restoring" in busy.output
        assert runner.invoke(cli, ["get", "p001"]).exit_code == 1
    finally:
        worker.terminate()
        worker.wait(60)
    assert runner.invoke(cli, ["restore", str(tmp_path / "bk")]).exit_code == 0
    assert runner.invoke(cli, ["get", "p001"]).exit_code == 0


_WRITER = """
import os, sys
from retrieval import Retriever, load_settings
r = Retriever.from_settings(load_settings())
b = 0
while not os.path.exists(sys.argv[1]):  # until the test has its backup
    r.ingest([{"id": f"b{b}-{i}", "text": f"batch {b} item {i} " + " ".join(f"w{(b * 7 + i * 3 + j) % 97}" for j in range(6))}
              for i in range(20)])
    print(b, flush=True)
    b += 1
"""


def test_a_backup_taken_under_concurrent_ingest_and_a_worker_restores_clean(store_env: dict[str, str], tmp_path: Path,
                                                                            make_retriever) -> None:
    import os
    import threading

    env = {**os.environ}
    stop = tmp_path / "stop"
    errors = (tmp_path / "writer.err").open("w")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(stop)], env=env, stdout=subprocess.PIPE,
                              stderr=errors, text=True)
    worker = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "worker", "--poll-interval", "0.1"], env=env,
                              stderr=subprocess.DEVNULL)
    written: list[int] = []
    lines = writer.stdout
    assert lines is not None
    reader = threading.Thread(target=lambda: written.extend(int(line) for line in lines), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while len(written) < 10:  # some batches in, the writer still going
            assert writer.poll() is None and time.monotonic() < deadline, \
                f"the writer stopped or stalled after {len(written)} batches: {(tmp_path / 'writer.err').read_text()[-2000:]}"
            time.sleep(0.05)
        made = subprocess.run([sys.executable, "-m", "retrieval.cli", "backup", str(tmp_path / "bk"), "--json"],
                              env=env, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        assert writer.poll() is None, "the backup should have run while the writer was writing"
    finally:
        stop.touch()  # the writer stops at its next batch; the worker is asked to stop
        worker.terminate()
        for process in (writer, worker):
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(30)
        errors.close()
    assert writer.returncode == 0, (tmp_path / "writer.err").read_text()[-2000:]
    info = json.loads(made.stdout)
    batches = max(written) + 1
    assert 10 * 20 <= info["documents"] < batches * 20 and info["documents"] % 20 == 0  # whole transactions only

    # Restored into a store of its own, it verifies clean and answers as the original did
    # at the backup's position: as a store holding exactly those documents.
    restored = make_retriever(tmp_path / "restored")
    report = __import__("retrieval.backup", fromlist=["restore"]).restore(restored, tmp_path / "bk")
    assert not report.rebuilt and report.documents == info["documents"]
    assert restored.verify().ok
    kept = sorted(restored.store.get_many([f"b{b}-{i}" for b in range(batches) for i in range(20)]).values(),
                  key=lambda d: d.id)
    assert len(kept) == info["documents"] and {d.external_id.split("-")[0] for d in kept} == \
        {f"b{b}" for b in range(info["documents"] // 20)}
    reference = make_retriever(tmp_path / "reference")
    reference.ingest([{"id": d.external_id, "text": d.text} for d in kept])
    for query in ("batch 3 item 7", "w5 w12 w40", "item 19 w96", kept[-1].text):
        got, want = restored.search(query, k=10), reference.search(query, k=10)
        assert [round(h.score, 5) for h in got] == [round(h.score, 5) for h in want], query
        # The same documents (the order of equal scores may differ in the last float bit
        # between one segment and several).
        last = round(want[-1].score, 5)
        assert {h.id for h in got if round(h.score, 5) > last} == {h.id for h in want if round(h.score, 5) > last}
