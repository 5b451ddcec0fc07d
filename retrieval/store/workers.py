"""Workers in the database: their state, the lock that keeps one per replica, and the
notifications that wake them.

Any number of index folders (replicas) may follow one database, each with its own
worker. A worker is known by its replica's name (``replica_name``, by default host and
index folder), and its state is a row of ``workers``, so ``retrieve status`` on any
machine sees every worker following the database.

On PostgreSQL:

* :class:`AdvisoryLock` holds a session-level advisory lock keyed by the replica's name
  on a connection of its own: a second worker for the same replica is refused, and the
  lock dies with its holder's connection (a killed worker leaves nothing to clean up).
  Whether a worker runs is read from ``pg_locks``, from any machine.
* :class:`ChangeListener` LISTENs on revision 0003's channel, which every committed
  change to documents notifies. Notifications are not replayed to a listener that was
  disconnected, so the worker polls as well.

On SQLite the worker's file lock in its index folder is the lock (one machine, one
file), and there is nothing to listen to: the worker polls.
"""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError

from retrieval.store import db
from retrieval.store.models import Base
from retrieval.store.repository import Store

log = logging.getLogger("retrieval.worker")

_WORKERS = Base.metadata.tables["workers"]


def lock_key(name: str) -> int:
    """The advisory lock key of a replica: 63 bits of sha1 of its name."""
    return int.from_bytes(hashlib.sha1(f"retrieval worker {name}".encode()).digest()[:8], "big") >> 1


def save_state(store: Store, name: str, *, host: str, pid: int, index_dir: str, state: dict[str, Any],
               started_at: float) -> None:
    """Insert or replace the worker row of replica ``name`` (its heartbeat is now)."""
    values = {"name": name, "host": host, "pid": pid, "index_dir": index_dir, "state": state,
              "started_at": datetime.fromtimestamp(started_at, UTC), "heartbeat_at": func.current_timestamp()}
    insert = postgresql.insert if store.dialect == "postgresql" else sqlite_dialect.insert
    stmt = insert(_WORKERS).values(values)
    stmt = stmt.on_conflict_do_update(index_elements=["name"], set_={k: stmt.excluded[k] for k in values if k != "name"})
    with store.write() as conn:
        conn.execute(stmt)


def forget_state(store: Store, name: str) -> bool:
    """Remove the worker row of replica ``name``; False when there was none."""
    with store.write() as conn:
        return bool(conn.execute(_WORKERS.delete().where(_WORKERS.c.name == name)).rowcount)


def load_states(store: Store, name: str | None = None) -> list[dict[str, Any]]:
    """The worker rows (of replica ``name``, or all), each with its ``state`` merged in and
    ``running``: whether its advisory lock is held now (PostgreSQL), or None where only
    its own machine can tell (SQLite: the file lock in its index folder)."""
    query = select(_WORKERS).order_by(_WORKERS.c.name)
    if name is not None:
        query = query.where(_WORKERS.c.name == name)
    with store.connection() as conn:
        rows = conn.execute(query).mappings().all()
        held = _held_keys(conn) if conn.dialect.name == "postgresql" else None
    out = []
    for row in rows:
        entry = dict(row["state"] or {})
        entry.update(name=row["name"], host=row["host"], pid=row["pid"], index_dir=row["index_dir"],
                     heartbeat=_epoch(row["heartbeat_at"]))
        entry["running"] = None if held is None else lock_key(row["name"]) in held
        out.append(entry)
    return out


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


def _held_keys(conn: Connection) -> set[int]:
    """Session-level advisory locks on a bigint key held now in this database."""
    rows = conn.execute(text(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
        "WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ))
    return {int(r[0]) for r in rows}


class AdvisoryLock:
    """A session-level PostgreSQL advisory lock on a connection of its own."""

    def __init__(self, store: Store, key: int) -> None:
        self.store = store
        self.key = key
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        """Take the lock if nobody holds it; True when this process holds it now."""
        if self.held():
            return True
        self._drop()
        try:
            conn = self.store.engine.connect()
            got = bool(conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}))
            conn.commit()  # the lock is the session's, not the transaction's
        except DBAPIError as exc:
            log.warning("cannot take the worker lock: %s", db.first_line(exc.orig))
            return False
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """Whether the lock's connection is still alive (a server restart ends it)."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except DBAPIError:
            self._drop()
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            except DBAPIError:
                pass
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()  # never back to the pool: it may hold the lock
                self._conn.close()
            except DBAPIError:
                pass
            self._conn = None


class ChangeListener:
    """Waits for revision 0003's change notifications (PostgreSQL), reconnecting after a
    lost connection; :meth:`wait` returns False on a timeout, so callers poll as well."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._conn: Any = None
        self._retry_at = 0.0

    def _connect(self) -> Any:
        import psycopg
        from sqlalchemy.engine import make_url

        conninfo = make_url(self.store.url).set(drivername="postgresql").render_as_string(hide_password=False)
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=10, application_name="retrieval listener")
        conn.execute(f"LISTEN {db.NOTIFY_CHANNEL}")
        return conn

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True when changes were committed meanwhile."""
        import psycopg

        deadline = time.monotonic() + timeout
        if self._conn is None:
            if time.monotonic() < self._retry_at:
                time.sleep(max(0.0, timeout))
                return False
            try:
                self._conn = self._connect()
            except psycopg.Error as exc:
                log.warning("cannot listen for changes (polling instead): %s", str(exc).splitlines()[0] if str(exc) else exc)
                self._retry_at = time.monotonic() + 5.0
                time.sleep(max(0.0, timeout))
                return False
        try:
            # One notification is enough: a sync covers every change committed before it,
            # and one that arrives later only costs a sync that finds nothing to do. (Never
            # call notifies() again inside the loop: the generator holds the connection's
            # lock while it is suspended.)
            for _ in self._conn.notifies(timeout=max(0.01, deadline - time.monotonic()), stop_after=1):
                return True
        except psycopg.Error:
            self.close()
        return False

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # closing a broken connection: nothing to do
                pass
            self._conn = None
