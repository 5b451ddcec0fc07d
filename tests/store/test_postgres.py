"""PostgreSQL-only behaviour, against a real server (see tests/fixtures/databases.py for where it comes from).

* the change log's sequence order is commit order: two real concurrent transactions;
* reads see one snapshot (REPEATABLE READ);
* concurrent upserts of the same ids from two processes: no error reaches the user and
  nothing is duplicated;
* a server restart in the middle of a worker run: the worker recovers, nothing is lost;
* two replicas (index folders) following one database converge;
* rows written by ``psql`` are picked up by ``retrieve sync``;
* a server that cannot be reached, a refused login and a missing driver get one line;
* revision 0003's schema: jsonb, timestamptz, updated_at kept by the database, and the
  migrations go both ways.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from retrieval.cli import cli
from retrieval.store import db
from retrieval.store.records import NewDocument
from retrieval.store.repository import Store
from tests.conftest import HASH
from tests.fixtures.databases import admin_connect, execute_sql, open_at_once
from tests.fixtures.stores import write_jsonl


@pytest.fixture
def pg_url(new_postgres_database: Callable[[], str]) -> str:
    return new_postgres_database()


def _env(url: str, index_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVE_DATABASE_URL": url, "RETRIEVE_INDEX_DIR": str(index_dir),
            "RETRIEVE_PROGRESS": "false", "RETRIEVE_MODEL": HASH, **extra}


def _wait_for(predicate: Callable[[], Any], timeout: float = 120.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


def _docs(prefix: str, n: int, version: str = "") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "text": f"item {prefix} {i} {version} " + "lorem " * (i % 5), "metadata": {"i": i}}
            for i in range(n)]


# -- the change log ------------------------------------------------------------------


def _backend_waiting_on_lock(admin: Any, pid: int) -> bool:
    row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return bool(row and row[0] == "Lock")


def test_change_log_order_is_commit_order_between_two_real_transactions(pg_url: str) -> None:
    """The hazard: a sequence number drawn at insert but visible at commit. Without the
    trigger's advisory lock, a reader could see change n + 1 committed while n is still in
    flight, and a sync would record n + 1 and skip n forever."""
    store = Store.open(pg_url)
    store.upsert([NewDocument("seed", "seed text", {})])
    first, second, admin = admin_connect(pg_url), admin_connect(pg_url), admin_connect(pg_url)
    try:
        first.execute("BEGIN")
        first.execute("INSERT INTO documents (external_id, text) VALUES ('a', 'first writer')")
        done: list[BaseException | None] = []

        def second_writer() -> None:
            try:
                with second.transaction():
                    second.execute("INSERT INTO documents (external_id, text) VALUES ('b', 'second writer')")
                done.append(None)
            except BaseException as exc:  # pragma: no cover - reported below
                done.append(exc)

        thread = threading.Thread(target=second_writer)
        thread.start()
        # The second writer waits for the first one's lock before it draws a number...
        _wait_for(lambda: _backend_waiting_on_lock(admin, second.info.backend_pid), timeout=30)
        assert not done
        # ...so a reader sees neither change: no later number is visible before an earlier one.
        with store.read() as snap:
            assert snap.max_seq() == 1
        first.execute("COMMIT")
        thread.join(timeout=30)
        assert done == [None]
        rows = admin.execute("SELECT d.external_id, c.seq FROM changes c JOIN documents d ON d.id = c.doc_id "
                             "ORDER BY c.seq").fetchall()
        assert [r[0] for r in rows] == ["seed", "a", "b"]
    finally:
        for c in (first, second, admin):
            c.close()
        store.close()


def test_a_read_is_one_snapshot(pg_url: str) -> None:
    store = Store.open(pg_url)
    store.upsert([NewDocument("a", "one", {})])
    try:
        with store.read() as snap:
            before = snap.max_seq()
            count = len(snap.all_ids())
            execute_sql(pg_url, "INSERT INTO documents (external_id, text) VALUES ('b', 'two')")
            assert snap.max_seq() == before  # READ COMMITTED would see the new change here
            assert len(snap.all_ids()) == count
        with store.read() as snap:
            assert snap.max_seq() == before + 1
    finally:
        store.close()


def test_an_ingest_waits_for_an_open_writer_and_a_sync_then_sees_both(make_retriever, pg_url: str) -> None:
    r = make_retriever(database_url=pg_url)
    r.ingest(_docs("x", 5))
    slow = admin_connect(pg_url)
    ingested = threading.Event()
    try:
        slow.execute("BEGIN")
        slow.execute("INSERT INTO documents (external_id, text) VALUES ('late', 'a change committed late')")
        thread = threading.Thread(target=lambda: (r.ingest(_docs("y", 3), sync=False), ingested.set()))
        thread.start()
        report = r.sync()  # the open transaction's change is invisible: the sync stops before it
        assert r.status()["last_seq"] == report.last_seq == 5
        # The second writer queues behind the first, on the change log's lock.
        admin = admin_connect(pg_url)
        try:
            _wait_for(lambda: admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                            "AND wait_event_type = 'Lock'").fetchone()[0] == 1, timeout=30)
        finally:
            admin.close()
        assert not ingested.is_set()
        slow.execute("COMMIT")
        thread.join(timeout=60)
        assert ingested.is_set()
    finally:
        slow.close()
    r.sync()
    st = r.status()
    assert st["pending_changes"] == 0 and st["indexed"] == 9
    assert r.search("a change committed late", k=1)[0].id == "late"
    assert r.verify().ok


# -- writers -------------------------------------------------------------------------


def test_concurrent_upserts_of_the_same_ids_from_two_processes(pg_url: str, tmp_path: Path) -> None:
    index = tmp_path / "index"
    env = _env(pg_url, index)
    files = [write_jsonl(tmp_path / f"{v}.jsonl", _docs("d", 400, version=v)) for v in ("one", "two")]
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "retrieval", "ingest", "--no-sync", str(f)], env=env,
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for f in files]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
            assert "Traceback" not in err and "duplicate key" not in err
    conn = admin_connect(pg_url)
    try:
        total, distinct = conn.execute("SELECT count(*), count(DISTINCT external_id) FROM documents").fetchone()
        texts = {r[0] for r in conn.execute("SELECT text FROM documents WHERE external_id = 'd7'")}
        vectors = conn.execute("SELECT count(*), count(DISTINCT (model_key, content_hash)) FROM embeddings").fetchone()
    finally:
        conn.close()
    assert total == distinct == 400
    assert len(texts) == 1 and texts <= {d["text"].strip() for f in ("one", "two") for d in _docs("d", 400, f) if d["id"] == "d7"}
    assert vectors[0] == vectors[1]
    runner = CliRunner()
    result = runner.invoke(cli, ["sync"], env=_env(pg_url, index))
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["verify"], env=_env(pg_url, index)).exit_code == 0


def test_data_postgresql_refuses_gets_one_line_and_harms_nothing(pg_url: str) -> None:
    """A NUL character (SQLite stores it, PostgreSQL cannot) in a text or in metadata: a
    clear error, nothing stored is harmed, and the same connections keep working (the
    first write on a connection also creates its staging table: a rollback takes it away)."""
    from retrieval.errors import StoreError

    store = Store.open(pg_url)
    try:
        with pytest.raises(StoreError, match="'bad'.*NUL"):
            store.upsert([NewDocument("bad", "nul \x00 here", {})])
        for _ in range(3):  # more attempts than pooled connections get tried first
            with pytest.raises(StoreError, match="refused the data"):
                store.upsert([NewDocument("ok", "fine text", {"k": "nul \x00 in metadata"})])
        assert store.upsert([NewDocument("ok", "fine text", {"k": "v"})]).added == 1
        assert store.upsert([NewDocument("two", "another text", {})]).added == 1
        assert sorted(store.get_many(["ok", "two", "bad"])) == ["ok", "two"]
    finally:
        store.close()


def test_rows_written_by_psql_are_picked_up_by_retrieve_sync(pg_url: str, tmp_path: Path) -> None:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql is not installed")
    index = tmp_path / "index"
    env = _env(pg_url, index)
    data = write_jsonl(tmp_path / "docs.jsonl", _docs("p", 4))
    assert subprocess.run([sys.executable, "-m", "retrieval", "ingest", str(data)], env=env, cwd=tmp_path,
                          capture_output=True, timeout=300).returncode == 0
    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
    sql = ("INSERT INTO documents (external_id, text, metadata) VALUES ('psql1', 'A cast iron frying pan', "
           "'{\"src\": \"psql\"}'); UPDATE documents SET text = 'A woollen winter scarf' WHERE external_id = 'p0'; "
           "DELETE FROM documents WHERE external_id = 'p1';")
    subprocess.run([psql, conninfo, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True)
    synced = subprocess.run([sys.executable, "-m", "retrieval", "sync", "--json"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["changes"] == 3
    found = subprocess.run([sys.executable, "-m", "retrieval", "search", "--json", "-k", "3", "cast iron frying pan",
                            "--where", "src=psql"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    hits = json.loads(found.stdout)["results"]
    assert [h["id"] for h in hits] == ["psql1"]
    verify = subprocess.run([sys.executable, "-m", "retrieval", "verify"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- the worker and replicas -----------------------------------------------------------


def _server_data_dir(admin_url: str) -> str:
    conn = admin_connect(admin_url)
    try:
        return str(conn.execute("SHOW data_directory").fetchone()[0])
    finally:
        conn.close()


def _restart_server(admin_url: str) -> None:
    data = _server_data_dir(admin_url)
    # -l: the new server's output goes to a file, not to pipes this test would wait on.
    cmd = ["pg_ctl", "-D", data, "-l", str(Path(data) / "restart.log"), "-w", "-m", "fast", "restart"]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=120)


def test_a_server_restart_during_a_worker_run_loses_nothing(pg_url: str, postgres_admin_url: str,
                                                            tmp_path: Path) -> None:
    if shutil.which("pg_ctl") is None:
        pytest.skip("pg_ctl is not installed")
    index = tmp_path / "index"
    env = _env(pg_url, index)
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(write_jsonl(tmp_path / "a.jsonl", _docs("a", 50)))], env=env).exit_code == 0
    worker = subprocess.Popen([sys.executable, "-m", "retrieval", "worker", "--poll-interval", "0.3"], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    status = lambda: json.loads(runner.invoke(cli, ["status", "--json"], env=env).output)
    try:
        _wait_for(lambda: (status().get("worker") or {}).get("running"))
        _restart_server(postgres_admin_url)
        execute_sql(pg_url, "INSERT INTO documents (external_id, text) VALUES ('after', 'written after the restart')",
                    "DELETE FROM documents WHERE external_id = 'a3'")
        try:
            _wait_for(lambda: status()["pending_changes"] == 0 and status()["indexed"] == 50)
        except AssertionError:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=120)
            raise AssertionError(f"the worker did not catch up after the restart; its log:\n{err[-4000:]}") from None
        # The worker took its lock again: it shows as running from the database.
        _wait_for(lambda: status()["worker"]["running"] is True)
        assert runner.invoke(cli, ["search", "--json", "-k", "1", "written after the restart"],
                             env=env).output.count('"after"') == 1
        assert runner.invoke(cli, ["verify"], env=env).exit_code == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert "Traceback" not in err
    assert "event=sync_failed" in err or "lock_retaken" in err  # it did notice the restart


def test_two_replicas_follow_one_database_and_converge(pg_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    folders = [tmp_path / "replica-a" / "index", tmp_path / "replica-b" / "index"]
    envs = [_env(pg_url, f, RETRIEVE_REPLICA_NAME=name) for f, name in zip(folders, ("search-a", "search-b"))]
    writer = _env(pg_url, tmp_path / "writer-index")
    first = write_jsonl(tmp_path / "first.jsonl", _docs("r", 120))
    assert runner.invoke(cli, ["ingest", "--no-sync", str(first)], env=writer).exit_code == 0
    workers = [subprocess.Popen([sys.executable, "-m", "retrieval", "worker", "--poll-interval", "0.3"], env=e,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for e in envs]
    try:
        second = write_jsonl(tmp_path / "second.jsonl", _docs("r", 60, version="changed") + _docs("s", 30))
        assert runner.invoke(cli, ["ingest", "--no-sync", str(second)], env=writer).exit_code == 0
        assert runner.invoke(cli, ["delete", "r100", "r101", "s0"], env=writer).exit_code == 0

        def settled(e: dict[str, str]) -> bool:
            st = json.loads(runner.invoke(cli, ["status", "--json"], env=e).output)
            return st["pending_changes"] == 0 and st["indexed"] == 147

        for e in envs:
            _wait_for(lambda e=e: settled(e))
        queries = ["item r 7 changed", "item s 12", "lorem lorem", "item r 100"]
        answers = []
        for e in envs:
            answers.append([[(h["id"], round(h["score"], 5)) for h in
                             json.loads(runner.invoke(cli, ["search", "--json", "-k", "5", q], env=e).output)["results"]]
                            for q in queries])
            assert runner.invoke(cli, ["verify"], env=e).exit_code == 0
        assert answers[0] == answers[1]
        assert all(h[0] not in ("r100", "r101", "s0") for q in answers[0] for h in q)
        # Every machine sees every worker, from the database.
        st = json.loads(runner.invoke(cli, ["status", "--json"], env=writer).output)
        seen = {w["name"]: w["running"] for w in st["workers"]}
        assert seen == {"search-a": True, "search-b": True}
        text_status = runner.invoke(cli, ["status"], env=envs[0]).output
        assert "search-b: running" in text_status
        # A second worker for a replica is refused by the database's lock too.
        other_folder = _env(pg_url, tmp_path / "elsewhere" / "index", RETRIEVE_REPLICA_NAME="search-a")
        refused = subprocess.run([sys.executable, "-m", "retrieval", "worker"], env=other_folder, cwd=tmp_path,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 3 and "search-a" in refused.stderr and "Traceback" not in refused.stderr
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err


# -- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("make_bad", [
    lambda url: make_url(url).set(port=1).render_as_string(hide_password=False),
    lambda url: make_url(url).set(username="nobody").render_as_string(hide_password=False),
    lambda url: make_url(url).set(database="no_such_database").render_as_string(hide_password=False),
], ids=["unreachable", "unknown-role", "unknown-database"])
def test_a_database_that_cannot_be_used_gets_one_line(postgres_admin_url: str, tmp_path: Path,
                                                      make_bad: Callable[[str], str]) -> None:
    url = make_bad(postgres_admin_url)
    run = subprocess.run([sys.executable, "-m", "retrieval", "status"], env=_env(url, tmp_path / "index"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    where = make_url(url)
    assert lines[0].startswith("Error: cannot open the database") and f"{where.host}:{where.port}" in lines[0]


def test_a_postgresql_url_without_the_driver_names_the_extra(postgres_admin_url: str, tmp_path: Path) -> None:
    code = "import sys; sys.modules['psycopg'] = None; from retrieval.cli import main; main()"
    for url in (postgres_admin_url, make_url(postgres_admin_url).set(drivername="postgresql").render_as_string()):
        run = subprocess.run([sys.executable, "-c", code, "status"], env=_env(url, tmp_path / "index"),
                             capture_output=True, text=True, timeout=120)
        assert run.returncode != 0
        assert run.stderr.strip().splitlines() == [
            "Error: PostgreSQL needs the psycopg driver, which is not installed: pip install 'retrieval[postgres]'"]


def test_a_connection_killed_during_an_ingest_fails_cleanly_and_loses_nothing(pg_url: str, tmp_path: Path) -> None:
    index = tmp_path / "index"
    env = _env(pg_url, index, RETRIEVE_BATCH_SIZE="16")
    data = write_jsonl(tmp_path / "many.jsonl", _docs("k", 3000))
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "ingest", str(data)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    admin = admin_connect(pg_url)
    try:
        name = make_url(pg_url).database
        _wait_for(lambda: admin.execute("SELECT to_regclass('documents') IS NOT NULL").fetchone()[0]
                  and admin.execute("SELECT count(*) FROM documents").fetchone()[0] > 0, interval=0.02)
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND application_name = 'retrieval' AND pid <> pg_backend_pid()", (name,))
        out, err = proc.communicate(timeout=300)
    finally:
        admin.close()
    # Either the ingest finished (the pool replaced the connection) or it stopped on one line.
    if proc.returncode != 0:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert "database" in err
    rerun = subprocess.run([sys.executable, "-m", "retrieval", "ingest", str(data)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    runner = CliRunner()
    st = json.loads(runner.invoke(cli, ["status", "--json"], env=env).output)
    assert st["documents"] == 3000 and st["pending_changes"] == 0 and st["indexed"] == 3000
    assert runner.invoke(cli, ["verify"], env=env).exit_code == 0


# -- the schema --------------------------------------------------------------------------


def test_revision_0003_schema_jsonb_timestamptz_and_updated_at(pg_url: str) -> None:
    store = Store.open(pg_url)
    store.upsert([NewDocument("a", "first", {"n": 1})])
    conn = admin_connect(pg_url)
    try:
        types = dict(conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name = 'documents'").fetchall())
        assert types["metadata"] == "jsonb"
        assert types["created_at"] == types["updated_at"] == "timestamp with time zone"
        assert types["text_search"] == "tsvector"
        conn.execute("UPDATE documents SET updated_at = now() - interval '1 day'")
        before = conn.execute("SELECT updated_at FROM documents").fetchone()[0]
        conn.execute("UPDATE documents SET content_hash = 'x'")  # not a content change
        assert conn.execute("SELECT updated_at FROM documents").fetchone()[0] == before
        store.upsert([NewDocument("a", "second", {"n": 1})])
        after = conn.execute("SELECT updated_at FROM documents").fetchone()[0]
        assert after > before
        indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'documents'")}
        assert {"ix_documents_metadata", "ix_documents_text_search"} <= indexes
    finally:
        conn.close()
    # timestamptz is read as the instant the database holds, whatever the session's zone.
    conn = admin_connect(pg_url)
    try:
        expected = float(conn.execute("SELECT extract(epoch FROM min(changed_at)) FROM changes").fetchone()[0])
    finally:
        conn.close()
    with store.read() as snap:
        snap.conn.exec_driver_sql("SET LOCAL TimeZone = 'America/Los_Angeles'")
        lag_from = snap.oldest_change_after(0)
    assert lag_from is not None and abs(lag_from - expected) < 1e-3
    store.close()


def test_migrations_go_both_ways_and_the_models_match(pg_url: str) -> None:
    from alembic import command

    engine = db.create_store_engine(pg_url)
    try:
        db.upgrade(engine)
        with engine.connect() as conn:
            conn.execute(text("INSERT INTO documents (external_id, text, metadata) VALUES ('a', 'kept', '{\"k\": 1}')"))
            conn.commit()
        cfg = db.alembic_config()
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            command.check(cfg)
        db.downgrade(engine, "0002")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT data_type FROM information_schema.columns WHERE table_name = 'documents' "
                                    "AND column_name = 'metadata'")) == "json"
            conn.rollback()
        db.downgrade(engine, "base")
        db.upgrade(engine)
        assert db.current_revision(engine) == db.HEAD_REVISION
    finally:
        engine.dispose()


def test_two_processes_opening_a_new_database_migrate_it_once(pg_url: str, tmp_path: Path) -> None:
    open_at_once(pg_url, 3)


# -- the HTTP service ------------------------------------------------------------------


def test_retrieve_serve_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    import httpx

    from tests.http.test_server import AUTH, Server

    srv = Server(tmp_path)
    srv.env["RETRIEVE_DATABASE_URL"] = pg_url
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, headers=AUTH, timeout=60) as c:
            docs = [{"id": "shoe", "text": "Running shoes with cushioning for marathon runners", "metadata": {"kind": "shoe"}},
                    {"id": "boot", "text": "Waterproof hiking boots for the mountains", "metadata": {"kind": "boot"}},
                    {"id": "shirt", "text": "A cotton t-shirt for everyday wear", "metadata": {"kind": "shirt"}}]
            assert c.post("/v1/documents", json={"documents": docs}).status_code == 200
            for mode in ("dense", "keyword", "hybrid"):
                r = c.post("/v1/search", json={"query": "running shoes", "k": 2, "mode": mode})
                assert r.status_code == 200, r.text
                assert r.json()["results"][0]["id"] == "shoe", (mode, r.json())
            r = c.post("/v1/search", json={"query": "running shoes", "k": 3, "where": {"kind": {"$in": ["boot", "shirt"]}}})
            assert {h["id"] for h in r.json()["results"]} == {"boot", "shirt"}
            assert c.get("/v1/documents/boot/similar", params={"k": 1}).status_code == 200
            status = c.get("/v1/status").json()
            assert status["documents"] == 3 and "postgresql at" in status["database"]
    finally:
        code = srv.stop()
    assert code in (0, -signal.SIGTERM), srv.log_text()
    assert "Application shutdown complete" in srv.log_text() and "Traceback" not in srv.log_text()
