"""`retrieve worker`: follow the change log and keep the index in sync.

One worker per replica (index folder), enforced by a lock file in the folder and, on
PostgreSQL, by an advisory lock keyed by the replica's name as well (it dies with the
worker's connection). The worker's pid and progress are a row of the database's
``workers`` table (:mod:`retrieval.store.workers`), which ``retrieve status`` reads from
any machine. On PostgreSQL the worker sleeps until a change is committed (LISTEN/NOTIFY)
and polls as a fallback. SIGTERM and SIGINT finish the batch in hand, publish it, and
exit cleanly.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.errors import RetrievalError, WorkerBusyError
from retrieval.store.db import describe_url
from retrieval.sync.states import LOCK_FILE, read_state

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

log = logging.getLogger("retrieval.worker")


__all__ = ["Schedule", "Worker", "WorkerBusyError", "parse_daily"]


def _kv(**fields: Any) -> str:
    """One structured log line: key=value pairs, values quoted when they contain spaces."""
    parts = []
    for k, v in fields.items():
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
        parts.append(f"{k}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)


def parse_daily(value: str) -> tuple[int, int]:
    """'HH:MM' -> (hour, minute)."""
    try:
        hour, minute = (int(p) for p in value.split(":"))
        if not (0 <= hour < 24 and 0 <= minute < 60):
            raise ValueError
    except ValueError as exc:
        raise RetrievalError(f"--reindex-at: expected HH:MM (24-hour clock), got {value!r}") from exc
    return hour, minute


@dataclass
class Schedule:
    every: float | None = None  # seconds between reindex checks
    daily: tuple[int, int] | None = None  # local time of day

    def next_after(self, now: float) -> float | None:
        times = []
        if self.every:
            times.append(now + self.every)
        if self.daily:
            today = datetime.fromtimestamp(now).replace(hour=self.daily[0], minute=self.daily[1], second=0, microsecond=0)
            if today.timestamp() <= now:
                today += timedelta(days=1)
            times.append(today.timestamp())
        return min(times) if times else None


class Worker:
    """Runs sync cycles until stopped."""

    def __init__(self, retriever: Retriever, *, poll_interval: float | None = None, max_batch: int | None = None,
                 schedule: Schedule | None = None, gc_every: float = 300.0) -> None:
        self.retriever = retriever
        self.poll_interval = poll_interval or retriever.settings.worker.poll_interval
        self.max_batch = max_batch or retriever.settings.worker.max_batch
        self.schedule = schedule or Schedule()
        self.gc_every = gc_every
        self.stop_event = threading.Event()
        # Set by a write in this process that left its publish to the worker (`retrieve
        # serve`): the idle wait ends at once instead of at the next poll.
        self.wake_event = threading.Event()
        self.index_dir = Path(retriever.settings.store.index_dir)
        self.name = retriever.replica_name
        self._db_lock: Any = None
        self._listener: Any = None
        self.started_at = time.time()
        self.cycles = 0
        self.synced_changes = 0
        self.last_sync_at: float | None = None
        self.last_error: str | None = None
        self.merging: str | None = None  # the merge running now
        self.merges_done = 0
        self.last_merge: dict[str, Any] | None = None
        self._merge_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        def _stop(signum: int, _frame: Any) -> None:
            log.info(_kv(event="stopping", signal=signal.Signals(signum).name))
            self.stop()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def stop(self) -> None:
        """Ask the loop to finish the cycle in hand and end."""
        self.stop_event.set()
        self.wake_event.set()

    def wake(self) -> None:
        """Run a cycle now (a change was committed in this process)."""
        self.wake_event.set()

    def run(self, *, wait: bool = False, once: bool = False) -> None:
        """Hold the store's worker lock and sync until stopped (or one cycle with ``once``)."""
        from filelock import FileLock, Timeout

        self.index_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.index_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise self._busy() from None
        try:
            self._take_database_lock(wait)
        except BaseException:
            lock.release()
            raise
        try:
            log.info(_kv(event="started", pid=os.getpid(), store=describe_url(self.retriever.settings.store.database_url),
                         replica=self.name,
                         poll_interval=self.poll_interval, max_batch=self.max_batch))
            next_reindex = self.schedule.next_after(time.time())
            next_gc = time.time() + self.gc_every
            self._merge_thread = threading.Thread(target=self._merge_loop, name="merges", daemon=True)
            self._merge_thread.start()
            while True:
                if not self._keep_database_lock():
                    self.last_error = "another worker took this replica's lock while the database was away"
                    log.error(_kv(event="lock_lost", replica=self.name))
                    break
                had_work = self._cycle()
                now = time.time()
                if next_reindex is not None and now >= next_reindex:
                    self._scheduled_reindex()
                    next_reindex = self.schedule.next_after(time.time())
                if now >= next_gc:
                    self._gc()
                    next_gc = now + self.gc_every
                self._write_state()
                if once or self.stop_event.is_set():
                    break
                if not had_work:
                    self._idle()
                if self.stop_event.is_set():
                    # Finish what arrived meanwhile? No: stop promptly, the next start resumes.
                    break
            log.info(_kv(event="stopped", cycles=self.cycles, changes=self.synced_changes))
        finally:
            try:
                self._write_state(stopped=True)
            finally:
                if self._listener is not None:
                    self._listener.close()
                if self._db_lock is not None:
                    self._db_lock.release()
                lock.release()

    def _busy(self) -> WorkerBusyError:
        state = read_state(self.retriever.store, self.name) or {}
        holder = f"pid {state.get('pid', '?')} on {state.get('host', '?')}, started {state.get('started', '?')}"
        return WorkerBusyError(
            f"another worker ({holder}) already serves this replica ({self.name}); stop it first, or pass --wait")

    def _take_database_lock(self, wait: bool) -> None:
        """On PostgreSQL: the replica's advisory lock, and a listener for changes."""
        if self.retriever.store.dialect != "postgresql":
            return
        from retrieval.store.workers import AdvisoryLock, ChangeListener, lock_key

        self._db_lock = AdvisoryLock(self.retriever.store, lock_key(self.name))
        while not self._db_lock.acquire():
            if not wait:
                raise self._busy()
            self.stop_event.wait(self.poll_interval)
            if self.stop_event.is_set():
                raise WorkerBusyError(f"stopped while waiting for another worker of {self.name}")
        self._listener = ChangeListener(self.retriever.store)

    def _keep_database_lock(self) -> bool:
        """After a lost connection (a server restart), take the advisory lock again;
        False when another worker of this replica took it meanwhile."""
        if self._db_lock is None or self._db_lock.held():
            return True
        if self._db_lock.acquire():
            log.warning(_kv(event="lock_retaken", replica=self.name))
            return True
        try:
            self.retriever.store.ping()
        except RetrievalError:
            return True  # the database is away: nobody else can hold the lock either; retry later
        return False

    def _idle(self) -> None:
        """Wait for the next poll, a wake-up from this process, or a change notification
        on PostgreSQL."""
        if self._listener is None:
            self.wake_event.wait(self.poll_interval)
            self.wake_event.clear()
            return
        deadline = time.monotonic() + self.poll_interval
        while not self.stop_event.is_set() and not self.wake_event.is_set() and time.monotonic() < deadline:
            if self._listener.wait(min(0.5, max(0.0, deadline - time.monotonic()))):
                return
        self.wake_event.clear()

    # -- work -----------------------------------------------------------------------

    def _cycle(self) -> bool:
        """One sync step; True when it applied changes (so poll again at once)."""
        try:
            report = self.retriever.sync(max_changes=self.max_batch, inline_merges=False)
        except RetrievalError as exc:
            self.last_error = str(exc)
            log.error(_kv(event="sync_failed", error=str(exc)))
            self.stop_event.wait(min(30.0, self.poll_interval * 5))
            return False
        self.cycles += 1
        self.last_sync_at = time.time()
        self.last_error = None
        if report.changes or report.full:
            self.synced_changes += report.changes
            log.info(_kv(event="synced", changes=report.changes, embedded=report.embedded, added=report.added,
                         removed=report.removed, version=report.version, last_seq=report.last_seq, seconds=report.seconds))
            return True
        return False

    def _merge_loop(self) -> None:
        """Run the merges the policy asks for, in the background, with a bounded number of
        FAISS threads: searches and syncs go on meanwhile."""
        threads = self.retriever.settings.index.merge_threads
        while not self.stop_event.is_set():
            try:
                done = self.retriever.merge(wait=False, threads=threads, stop=self.stop_event, progress=self._merge_started)
            except RetrievalError as exc:
                log.error(_kv(event="merge_failed", error=str(exc)))
                done = []
            except Exception as exc:  # a merge is an optimisation: never take the worker down
                log.exception(_kv(event="merge_failed", error=f"{type(exc).__name__}: {exc}"))
                done = []
            self.merging = None
            for report in done:
                self.merges_done += 0 if report.abandoned else 1
                self.last_merge = report.as_dict()
                log.info(_kv(event="merged", reason=report.reason, inputs=report.inputs, rows=report.live, kind=report.kind,
                             recall=report.recall, ef_search=report.ef_search, carried=report.carried_tombstones,
                             segments=report.segments_after, seconds=report.seconds, abandoned=report.abandoned))
            self.stop_event.wait(self.poll_interval if done else max(self.poll_interval, 2.0))

    def _merge_started(self, what: str) -> None:
        self.merging = what
        self._write_state()
        log.info(_kv(event="merge_started", merge=what))

    def _scheduled_reindex(self) -> None:
        from retrieval.sync.maintenance import reindex_needed

        decision = reindex_needed(self.retriever)
        log.info(_kv(event="reindex_check", needed=decision.needed, reason=decision.reason))
        if decision.needed:
            report = self.retriever.reindex()
            log.info(_kv(event="reindexed", documents=report.added, embedded=report.embedded, version=report.version,
                         seconds=report.seconds))

    def _gc(self) -> None:
        from retrieval.sync.space import collect_garbage

        r = self.retriever
        try:
            removed = collect_garbage(r.store, r.index_store, r.replica_name)
            with r.sync_lock():
                self.retriever.index_store.collect_garbage()
        except RetrievalError as exc:
            log.warning(_kv(event="gc_failed", error=str(exc)))
            return
        if removed["embeddings"] or removed["changes"]:
            log.info(_kv(event="gc", embeddings=removed["embeddings"], changes=removed["changes"]))

    def _write_state(self, *, stopped: bool = False) -> None:
        from retrieval.store.workers import save_state

        manifest = self.retriever.index_store.read_manifest()
        state = {
            "started": datetime.fromtimestamp(self.started_at).isoformat(timespec="seconds"),
            "last_sync": datetime.fromtimestamp(self.last_sync_at).isoformat(timespec="seconds") if self.last_sync_at else None,
            "last_sync_epoch": self.last_sync_at,
            "index_version": manifest.version if manifest else None,
            "last_seq": manifest.last_seq if manifest else 0,
            "cycles": self.cycles,
            "changes_applied": self.synced_changes,
            "last_error": self.last_error,
            "merging": self.merging,
            "merges_done": self.merges_done,
            "last_merge": self.last_merge,
            "poll_interval": self.poll_interval,
            "listening": self._listener is not None,
            "stopped": stopped,
        }
        try:
            save_state(self.retriever.store, self.name, host=socket.gethostname(), pid=os.getpid(),
                       index_dir=str(self.index_dir.resolve()), state=state, started_at=self.started_at)
        except RetrievalError as exc:  # the database is away: the state catches up next cycle
            log.warning(_kv(event="state_not_saved", error=str(exc)))
