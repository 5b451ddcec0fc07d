"""`retrieve worker`: follow the change log and keep the index in sync.

One worker per store, enforced by a lock file next to the index; the holder's pid and
progress are in ``worker.json`` beside it, which ``retrieve status`` reads. SIGTERM and
SIGINT finish the batch in hand, publish it, and exit cleanly.
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
from typing import Any

from retrieval.errors import RetrievalError, WorkerBusyError
from retrieval.index.segments import lock_held

log = logging.getLogger("retrieval.worker")

STATE_FILE = "worker.json"
LOCK_FILE = "worker.lock"

__all__ = ["Schedule", "Worker", "WorkerBusyError", "parse_daily", "read_state"]


def _kv(**fields: Any) -> str:
    """One structured log line: key=value pairs, values quoted when they contain spaces."""
    parts = []
    for k, v in fields.items():
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
        parts.append(f"{k}={json.dumps(text) if (' ' in text or not text) else text}")
    return " ".join(parts)


def read_state(index_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The worker's last published state, with ``running`` telling whether it is alive."""
    path = Path(index_dir) / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    state["running"] = lock_held(Path(index_dir) / LOCK_FILE)
    return state


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

    def __init__(self, retriever: Any, *, poll_interval: float | None = None, max_batch: int | None = None,
                 schedule: Schedule | None = None, gc_every: float = 300.0) -> None:
        self.retriever = retriever
        self.poll_interval = poll_interval or retriever.settings.worker_poll_interval
        self.max_batch = max_batch or retriever.settings.worker_max_batch
        self.schedule = schedule or Schedule()
        self.gc_every = gc_every
        self.stop_event = threading.Event()
        self.index_dir = Path(retriever.settings.index_dir)
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
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, wait: bool = False, once: bool = False) -> None:
        """Hold the store's worker lock and sync until stopped (or one cycle with ``once``)."""
        from filelock import FileLock, Timeout

        self.index_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.index_dir / LOCK_FILE))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            state = read_state(self.index_dir) or {}
            holder = f"pid {state.get('pid', '?')} on {state.get('host', '?')}, started {state.get('started', '?')}"
            raise WorkerBusyError(
                f"another worker ({holder}) already serves this store ({self.index_dir}); stop it first, or pass --wait"
            ) from None
        try:
            log.info(_kv(event="started", pid=os.getpid(), store=self.retriever.settings.database_url,
                         poll_interval=self.poll_interval, max_batch=self.max_batch))
            next_reindex = self.schedule.next_after(time.time())
            next_gc = time.time() + self.gc_every
            self._merge_thread = threading.Thread(target=self._merge_loop, name="merges", daemon=True)
            self._merge_thread.start()
            while True:
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
                    self.stop_event.wait(self.poll_interval)
                if self.stop_event.is_set():
                    # Finish what arrived meanwhile? No: stop promptly, the next start resumes.
                    break
            log.info(_kv(event="stopped", cycles=self.cycles, changes=self.synced_changes))
        finally:
            self._write_state(stopped=True)
            lock.release()

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
        threads = self.retriever.settings.merge_threads
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
        from retrieval.maintenance import reindex_needed

        decision = reindex_needed(self.retriever)
        log.info(_kv(event="reindex_check", needed=decision.needed, reason=decision.reason))
        if decision.needed:
            report = self.retriever.reindex()
            log.info(_kv(event="reindexed", documents=report.added, embedded=report.embedded, version=report.version,
                         seconds=report.seconds))

    def _gc(self) -> None:
        from retrieval.maintenance import collect_garbage

        try:
            removed = collect_garbage(self.retriever)
            with self.retriever._sync_lock():
                self.retriever.index_store.collect_garbage()
        except RetrievalError as exc:
            log.warning(_kv(event="gc_failed", error=str(exc)))
            return
        if removed["embeddings"] or removed["changes"]:
            log.info(_kv(event="gc", embeddings=removed["embeddings"], changes=removed["changes"]))

    def _write_state(self, *, stopped: bool = False) -> None:
        manifest = self.retriever.index_store.read_manifest()
        state = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
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
            "stopped": stopped,
        }
        tmp = self.index_dir / f".{STATE_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.index_dir / STATE_FILE)
