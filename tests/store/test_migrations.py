"""The schema comes only from Alembic revisions, and they go both ways."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from retrieval.store import db


def test_head_revision_constant_matches_the_scripts() -> None:
    script = ScriptDirectory.from_config(db.alembic_config())
    assert script.get_current_head() == db.HEAD_REVISION


def test_upgrade_from_empty_to_head_check_and_downgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = db.create_store_engine(url)
    db.upgrade(engine, "head")
    assert db.current_revision(engine) == db.HEAD_REVISION
    tables = set(inspect(engine).get_table_names())
    assert {"documents", "embeddings", "changes", "alembic_version"} <= tables

    # The models describe exactly what the migrations built.
    cfg = db.alembic_config()
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.check(cfg)

    con = sqlite3.connect(tmp_path / "m.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    triggers = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
    assert triggers == {"documents_log_insert", "documents_log_update", "documents_log_delete",
                        "documents_fts_insert", "documents_fts_delete", "documents_fts_update"}
    con.close()

    db.downgrade(engine, "base")
    remaining = set(inspect(engine).get_table_names())
    assert remaining <= {"alembic_version"}
    con = sqlite3.connect(tmp_path / "m.db")
    assert con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0] == 0
    con.close()
    db.upgrade(engine, "head")
    assert db.current_revision(engine) == db.HEAD_REVISION
    engine.dispose()


def test_triggers_log_every_kind_of_write(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    db.ensure_schema(db.create_store_engine(url))
    con = sqlite3.connect(tmp_path / "t.db")
    with con:
        con.execute("INSERT INTO documents (external_id, text) VALUES ('a', 'x')")
        con.execute("UPDATE documents SET text = 'y' WHERE external_id = 'a'")
        con.execute("UPDATE documents SET content_hash = 'h' WHERE external_id = 'a'")  # not a content change
        con.execute("DELETE FROM documents WHERE external_id = 'a'")
    ops = con.execute("SELECT op FROM changes ORDER BY seq").fetchall()
    assert [o[0] for o in ops] == ["insert", "update", "delete"]
    con.close()


def test_store_opening_migrates_automatically_and_sets_pragmas(tmp_path: Path) -> None:
    from retrieval.store.repository import Store

    store = Store.open(f"sqlite:///{tmp_path / 'sub' / 'auto.db'}", busy_timeout_ms=1234)
    with store.connection() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA mmap_size").scalar() == db.MMAP_BYTES  # reads through a memory map
    assert db.current_revision(store.engine) == db.HEAD_REVISION
    store.close()


def test_processes_opening_a_new_sqlite_database_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Alembic commits after each revision on SQLite unless told the DDL is transactional;
    then a second process could take the write lock between two revisions and both apply
    the next one ("table documents_fts already exists": one process failed in about 30
    before the fix). The whole migration is one BEGIN IMMEDIATE transaction now."""
    from tests.fixtures.databases import open_at_once

    for round_ in range(6):
        open_at_once(f"sqlite:///{tmp_path / f'r{round_}.db'}", 4)


def test_a_migration_holds_the_write_lock_from_first_to_last_revision(tmp_path: Path) -> None:
    """Every revision runs in the one transaction that read the version: while a store
    migrates, another connection cannot write between two revisions."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = db.create_store_engine(url)
    seen: list[str] = []
    event.listen(engine, "commit", lambda conn: seen.append("commit"))
    event.listen(engine, "begin", lambda conn: seen.append("begin"))
    try:
        db.upgrade(engine)
        assert db.current_revision(engine) == db.HEAD_REVISION
    finally:
        engine.dispose()
    # One begin and one commit for the migration (current_revision's read adds a begin).
    assert seen[:2] == ["begin", "commit"] and seen.count("commit") == 1, seen


def test_opening_waits_for_a_rollback_journal_writer_to_switch_to_wal(tmp_path: Path) -> None:
    """Switching to WAL while another connection writes in rollback-journal mode fails at
    once in SQLite, without the busy timeout: two processes opening a new database at
    once saw "database is locked". Opening waits for the writer instead."""
    import sqlite3
    import threading

    path = tmp_path / "w.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")
    release = threading.Timer(0.3, lambda: writer.execute("COMMIT"))
    release.start()
    engine = db.create_store_engine(f"sqlite:///{path}", busy_timeout_ms=10_000)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar() == 1
    finally:
        release.join()
        engine.dispose()
        writer.close()
