"""Which workers follow the database and whether they run: their rows in ``workers``
(:mod:`retrieval.store.workers`), with ``running`` filled in where the database cannot
tell (SQLite) from the worker's file lock in its index folder, or its heartbeat."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from retrieval.index.store import lock_held
from retrieval.store.repository import Store
from retrieval.store.workers import load_states

LOCK_FILE = "worker.lock"  # in the index folder: one worker per replica
# A worker whose heartbeat is older than this many poll intervals (and at least a
# minute) counts as gone where its lock cannot be seen (SQLite, from another machine).
STALE_HEARTBEATS = 10


def _with_running(entry: dict[str, Any]) -> dict[str, Any]:
    """Fill in ``running`` where the database cannot tell (SQLite): from the worker's
    file lock when its folder is on this machine, else from its heartbeat."""
    if entry.get("running") is None:
        folder = Path(entry.get("index_dir") or "")
        held = lock_held(folder / LOCK_FILE) if entry.get("host") == socket.gethostname() and folder.is_dir() else None
        if held is not None:
            entry["running"] = held
        else:
            poll = float(entry.get("poll_interval") or 1.0)
            entry["running"] = not entry.get("stopped") and time.time() - (entry.get("heartbeat") or 0) < max(
                60.0, STALE_HEARTBEATS * poll)
    return entry


def read_states(store: Store) -> list[dict[str, Any]]:
    """Every worker following the database (one per replica), with ``running``."""
    return [_with_running(e) for e in load_states(store)]


def read_state(store: Store, replica: str) -> dict[str, Any] | None:
    """The state of the worker of ``replica``, with ``running`` telling whether it is alive."""
    states = load_states(store, replica)
    return _with_running(states[0]) if states else None
