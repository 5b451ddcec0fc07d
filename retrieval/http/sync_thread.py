"""The sync worker inside the service: changes other writers make reach the index
without a separate `retrieve worker`."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from retrieval.errors import RetrievalError, WorkerBusyError

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

log = logging.getLogger("retrieval.server")


class SyncThread:
    """Runs the store's :class:`~retrieval.sync.worker.Worker` on a daemon thread.

    When a separate ``retrieve worker`` already holds the store, this one stands by and
    retries, so the store never has two workers and never none while the service runs.
    """

    def __init__(self, retriever: Retriever, poll_interval: float) -> None:
        from retrieval.sync.worker import Worker

        self.retriever = retriever
        self.worker = Worker(retriever, poll_interval=poll_interval)
        self.poll_interval = poll_interval
        self.standing_by = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="sync-worker", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """Publish soon: a write in this process committed and left its publish to us."""
        self.worker.wake()

    def state(self) -> dict[str, Any]:
        w = self.worker
        return {"running": self.alive, "standing_by": self.standing_by, "cycles": w.cycles,
                "last_sync_at": w.last_sync_at, "last_error": w.last_error or self.error}

    def _run(self) -> None:
        while not self.worker.stop_event.is_set():
            try:
                self.worker.run()
                self.standing_by = False
            except WorkerBusyError as exc:
                if not self.standing_by:
                    log.info("another worker keeps this store in sync; standing by (%s)", exc)
                self.standing_by = True
                self.worker.stop_event.wait(max(5.0, self.poll_interval * 5))
            except Exception as exc:  # keep serving: searches stay exact without the index being current
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("the sync worker failed; restarting it")
                self.worker.stop_event.wait(max(5.0, self.poll_interval * 5))

    def stop(self, timeout: float = 60.0) -> None:
        """Finish the cycle in hand, then publish what arrived meanwhile."""
        self.worker.stop()
        self._thread.join(timeout)
        if not self.standing_by:
            try:
                report = self.retriever.sync()
                if report.changes:
                    log.info("published %d pending changes before exiting (version %s)", report.changes, report.version)
            except RetrievalError as exc:
                log.error("could not publish pending changes on exit: %s (the next start applies them)", exc)
