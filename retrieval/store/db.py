"""Engine set-up: SQLite pragmas, explicit transactions, and schema migration on open."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from retrieval.errors import StoreError

# The newest revision in retrieval/migrations/versions. Opening a store compares it with the
# database's alembic_version and only loads Alembic when they differ, which keeps
# commands such as `retrieve status` and `retrieve search` fast to start.
# tests/store/test_migrations.py checks that it matches the migration scripts.
HEAD_REVISION = "0006"

# PostgreSQL advisory lock keys (per database). Revision 0003's trigger takes
# CHANGE_LOG_LOCK for the rest of each transaction that changes documents, so that
# change-log sequence order is commit order; MIGRATION_LOCK makes concurrent first opens
# of a new database migrate it once; workers take WORKER_LOCK_BASE + their replica's key.
CHANGE_LOG_LOCK = 7_283_460_113
MIGRATION_LOCK = 7_283_460_114
NOTIFY_CHANNEL = "retrieval_changes"


def migrations_dir() -> Path:
    """The Alembic script folder, ``retrieval/migrations``: package data, so a wheel
    install has it as much as the source tree does."""
    folder = Path(__file__).resolve().parent.parent / "migrations"
    if not (folder / "env.py").is_file():
        raise StoreError(f"the migrations folder {folder} is missing from this installation of retrieval; reinstall it")
    return folder


def normalise_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` mean psycopg 3 here (SQLAlchemy's default
    for them would be psycopg2, which retrieval does not use)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def describe_url(url: str) -> str:
    """Where a database is, for messages: the host, port and database, never a password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.database or ":memory:"
    where = parsed.host or "localhost"
    if parsed.port:
        where += f":{parsed.port}"
    return f"{parsed.get_backend_name()} at {where}/{parsed.database or ''}"


def _require_driver(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return
    if parsed.get_driver_name() != "psycopg":
        raise StoreError(f"use the psycopg 3 driver for PostgreSQL: postgresql+psycopg://... (got {parsed.drivername}://)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise StoreError(
            "PostgreSQL needs the psycopg driver, which is not installed: pip install 'retrieval[postgres]'"
        ) from None


def _sqlite_path(url: str) -> str | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return db


# Address space, not memory: the OS pages in what is read and can drop it at will.
MMAP_BYTES = 1 << 30

# SQLite calls the progress handler every this many virtual-machine instructions (a few
# microseconds of work): often enough that a deadline or Ctrl-C stops a long statement
# at once, rarely enough to cost nothing measurable.
PROGRESS_OPCODES = 10_000

_deadline = threading.local()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Statements this thread runs inside the block stop when ``seconds`` have passed
    (SQLite: the progress handler; PostgreSQL: ``statement_timeout``), with
    :class:`~retrieval.errors.SearchTimeoutError`. None or 0: no deadline."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds if seconds else None
    try:
        yield
    finally:
        _deadline.at = previous


def remaining() -> float | None:
    """Seconds left before this thread's deadline (None: it has none)."""
    at = getattr(_deadline, "at", None)
    return None if at is None else at - time.monotonic()


def _progress() -> int:
    # Being Python, this call also lets a pending Ctrl-C raise: SQLite then stops the
    # statement ("interrupted"), which the store turns back into KeyboardInterrupt.
    at = getattr(_deadline, "at", None)
    return 1 if at is not None and time.monotonic() > at else 0


def interrupted(exc: BaseException) -> BaseException | None:
    """What an "interrupted" statement means: past this thread's deadline, or Ctrl-C
    (None for any other error)."""
    from retrieval.errors import SearchTimeoutError

    text = str(getattr(exc, "orig", exc))
    if "statement timeout" in text or ("interrupted" in text and (remaining() or 0) < 0):
        return SearchTimeoutError("the search ran past its deadline (search_timeout_ms) and was stopped; narrow it "
                                  "(a filter, fewer query terms) or raise search_timeout_ms")
    if "interrupted" in text:
        return KeyboardInterrupt()
    return None


def writable(url: str) -> bool:
    """Whether this process can write the SQLite file of ``url`` and its folder (SQLite
    writes its journal beside the file); True for other databases and new files."""
    path = _sqlite_path(normalise_url(url))
    if path is None or not os.path.exists(path):
        return True
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def create_store_engine(url: str, *, busy_timeout_ms: int = 30_000, readonly: str | None = None) -> Engine:
    """Create an engine; for SQLite: WAL, a busy timeout, foreign keys, full fsync.

    pysqlite's own transaction handling does not BEGIN before a SELECT, so a read of
    several statements would not see one snapshot. We turn it off and emit BEGIN
    ourselves: ``BEGIN`` for readers, ``BEGIN IMMEDIATE`` for writers (execution option
    ``sqlite_begin``), so that two writers queue on the busy timeout instead of one
    failing with "database is locked" when it upgrades a read lock.

    ``readonly`` opens a SQLite file this process cannot write (a read-only mount,
    another user's folder): ``"ro"`` reads it as it is (WAL included), ``"immutable"``
    where SQLite cannot even make the WAL's shared-memory file beside it.
    """
    url = normalise_url(url)
    _require_driver(url)
    path = _sqlite_path(url)
    connect_url = url
    if readonly and path is not None:
        flag = "immutable=1" if readonly == "immutable" else "mode=ro"
        connect_url = f"sqlite:///file:{os.path.abspath(path)}?{flag}&uri=true"
    kwargs: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "postgresql":
        # A pooled connection that the server dropped (a restart, a failover) is noticed
        # and replaced before use instead of failing the next query.
        kwargs.update(pool_size=8, max_overflow=16, pool_pre_ping=True,
                      connect_args={"connect_timeout": 10, "application_name": "retrieval"})
    if path is not None:
        if not readonly:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Pooled connections: opening one (and setting its pragmas) costs more than a
        # whole warm search. Store.close() disposes of the pool.
        kwargs["pool_size"] = 4
        kwargs["max_overflow"] = 16
        kwargs["connect_args"] = {"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
    engine = create_engine(connect_url, **kwargs)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            dbapi_connection.set_progress_handler(_progress, PROGRESS_OPCODES)
            cur = dbapi_connection.cursor()
            cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not readonly:
                _use_wal(cur, busy_timeout_ms / 1000)
            cur.execute("PRAGMA synchronous = FULL")
            cur.execute("PRAGMA foreign_keys = ON")
            # Reads through a memory map instead of read() calls into a 2 MB page cache:
            # fetching a search's hits from a large store touches pages all over the file
            # (about 0.25 ms of a 2 ms search at 20,000 documents). Writes are unchanged.
            cur.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))

    return engine


def _use_wal(cur: Any, timeout_s: float) -> None:
    """Switch a SQLite database to WAL, waiting up to ``timeout_s`` for the lock it needs.

    The switch upgrades a shared lock, and SQLite answers "database is locked" at once,
    without its busy handler, while another connection holds a rollback-journal write
    lock: two processes opening a new database at once hit that. So wait here as the busy
    handler would, and re-read the mode, which the other process has often set meanwhile.
    """
    import sqlite3

    deadline = time.monotonic() + timeout_s
    pause = 0.002
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        try:
            if conn.dialect.name == "postgresql" and conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
                return None
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except OperationalError as exc:
            if conn.dialect.name != "sqlite" or "no such table" not in str(exc.orig):
                raise
            return None
        finally:
            conn.rollback()
    return row[0] if row else None


def alembic_config(engine: Engine | None = None, url: str | None = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _migrate(engine: Engine, direction: str, revision: str) -> None:
    """Run Alembic's upgrade or downgrade on one connection of ``engine``, holding the write lock."""
    from alembic import command

    cfg = alembic_config()
    with engine.connect().execution_options(sqlite_begin="BEGIN IMMEDIATE") as conn:
        if conn.dialect.name == "postgresql":
            # Two processes opening a new database at once: the second waits here, then
            # finds it migrated (Alembic reads the version after the lock is held).
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        getattr(command, direction)(cfg, revision)
        conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic revisions up to ``revision`` on ``engine``'s database."""
    _migrate(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Revert Alembic revisions down to ``revision``."""
    _migrate(engine, "downgrade", revision)


def ensure_schema(engine: Engine, *, readonly: bool = False) -> None:
    """Bring the schema to HEAD_REVISION; refuse a database from a newer version (and, on
    a database this process cannot write, one that needs an upgrade)."""
    try:
        rev = current_revision(engine)
    except OperationalError as exc:
        raise connection_error(exc, str(engine.url)) from exc
    if rev == HEAD_REVISION:
        return
    if rev is not None and not any((migrations_dir() / "versions").glob(f"{rev}_*.py")):
        raise StoreError(f"the database is at schema revision {rev}, unknown to this version of retrieval")
    if readonly:
        raise StoreError(f"the database {describe_url(str(engine.url))} needs an upgrade to schema revision "
                         f"{HEAD_REVISION} (it is at {rev or 'none'}), and this user cannot write it: run any "
                         "retrieve command once as a user who can")
    try:
        upgrade(engine)
    except OperationalError as exc:
        raise StoreError(f"cannot migrate the database ({describe_url(str(engine.url))}): {first_line(exc.orig)}") from exc


def first_line(exc: BaseException | None) -> str:
    """A driver's message on one line (libpq's span several, with hints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def connection_error(exc: OperationalError, url: str) -> StoreError:
    """One line for a database that cannot be reached or refuses the login."""
    return StoreError(f"cannot open the database ({describe_url(url)}): {first_line(exc.orig)}")


def file_size(url: str) -> int:
    """Bytes on disk of a SQLite database with its WAL (0 for other databases)."""
    path = _sqlite_path(url)
    if path is None:
        return 0
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(path + suffix)
        except OSError:
            pass
    return total


@contextmanager
def hold_write_lock(url: str) -> Iterator[None]:
    """Hold the database's write lock from a connection of its own until the block ends,
    as a long transaction of another program would; nothing is written. (The crash
    harness uses it to show what a writer meets when the lock outlives its busy timeout.)"""
    engine = create_store_engine(url)
    try:
        with engine.connect().execution_options(sqlite_begin="BEGIN IMMEDIATE") as conn:
            transaction = conn.begin()
            try:
                yield
            finally:
                transaction.rollback()
    finally:
        engine.dispose()


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (None for other databases and in-memory ones)."""
    return _sqlite_path(normalise_url(url))


def sqlite_copy(source: str | os.PathLike[str], target: str | os.PathLike[str], *, busy_timeout_ms: int = 30_000) -> None:
    """Copy a SQLite database with SQLite's online backup API: one consistent snapshot of
    ``source``, taken while other processes go on writing it (WAL), into ``target``,
    which is replaced page by page in one transaction (other connections to it see the
    old database or the new one). What `sqlite3 db ".backup file"` does."""
    import sqlite3

    src = sqlite3.connect(os.fspath(source), timeout=busy_timeout_ms / 1000)
    try:
        dst = sqlite3.connect(os.fspath(target), timeout=busy_timeout_ms / 1000)
        try:
            src.backup(dst)  # all pages in one step: one read transaction on the source
        finally:
            dst.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot copy the database {source} to {target}: {exc}") from exc
    finally:
        src.close()
    with open(target, "rb+") as fh:
        os.fsync(fh.fileno())


def sqlite_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What a restore checks in a SQLite file before it replaces a store with it: its
    integrity, schema revision, store id, change-log position and documents."""
    import sqlite3

    con = sqlite3.connect(f"file:{os.fspath(path)}?mode=ro", uri=True)
    try:
        check = con.execute("PRAGMA quick_check").fetchone()[0]
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        revision = con.execute("SELECT version_num FROM alembic_version").fetchone()[0] \
            if "alembic_version" in tables else None
        store_id = con.execute("SELECT value FROM store_info WHERE key = 'store_id'").fetchone()[0] \
            if "store_info" in tables else ""
        seq = con.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0] if "changes" in tables else 0
        docs = con.execute("SELECT count(*) FROM documents").fetchone()[0] if "documents" in tables else 0
    except sqlite3.Error as exc:
        raise StoreError(f"{path} is not a readable SQLite database: {exc}") from exc
    finally:
        con.close()
    return {"integrity": check, "revision": revision, "store_id": store_id, "max_seq": int(seq), "documents": int(docs)}

