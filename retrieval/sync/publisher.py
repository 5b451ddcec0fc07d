"""Publishing in the background: a small write returns once its database transaction is
durable, and a daemon thread publishes the index generation that holds it shortly after.

Searches do not wait for it: they score the change-log entries the index has not applied
exactly from their stored vectors (:mod:`retrieval.store.snapshot`), so a committed
document is found, an updated one has its new text and score, and a deleted one is gone
from the moment the write returns. Writes that arrive within ``delay`` seconds of each
other are published together, in one generation. :meth:`BackgroundPublisher.flush`
publishes what was asked for and raises what went wrong; :meth:`close` flushes and
stops the thread, and an interpreter that exits without closing flushes every
publisher with work left. A SIGKILL loses only the publish, never the write: the next
write, sync or worker cycle publishes the change log's backlog.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from retrieval.errors import IndexWriteError

log = logging.getLogger("retrieval")

DELAY_S = 0.02  # writes this close together are published in one generation
IDLE_EXIT_S = 5.0  # an idle thread ends; the next request starts another

_LIVE: weakref.WeakSet[BackgroundPublisher] = weakref.WeakSet()


def _flush_at_exit() -> None:
    for publisher in list(_LIVE):
        publisher.close(at_exit=True)


atexit.register(_flush_at_exit)


class BackgroundPublisher:
    """Calls ``publish`` (the keeper's sync) on a daemon thread after :meth:`request`.

    Requests are counted: a publish that starts after request *n* covers it (it reads the
    change log after that write's commit), so :meth:`flush` waits for the attempt that
    covers the last request made before it, and reports that attempt's error. A failed
    publish is logged and kept in :attr:`last_error` until a later one succeeds; the
    next request (the next write) tries again.

    With ``delegate`` set (``retrieve serve``, whose sync worker publishes), a request
    wakes that instead, so a store has one publisher per process.
    """

    def __init__(self, publish: Callable[[], Any], *, delay: float = DELAY_S) -> None:
        self._publish = publish
        self.delay = delay
        self.delegate: Callable[[], None] | None = None
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._thread: threading.Thread | None = None
        self._requested = 0  # requests made
        self._attempted = 0  # requests covered by the last finished attempt
        self._failed: BaseException | None = None  # the last attempt's error, None once one succeeds
        self.last_error_at: float | None = None
        self.publishes = 0
        self.failures = 0
        self.last_published_at: float | None = None

    # -- asking -----------------------------------------------------------------------

    def request(self) -> None:
        """Publish soon what was committed before this call."""
        if self.delegate is not None:
            self.delegate()
            return
        with self._cond:
            self._requested += 1
            self._wake.set()
            if not self._running():  # none yet, ended when idle, or left behind by a fork
                self._thread = threading.Thread(target=self._run, name="index-publisher", daemon=True)
                self._thread.start()
                _LIVE.add(self)

    @property
    def last_error(self) -> str | None:
        """The last attempt's error in one line; None once a publish succeeds."""
        failed = self._failed
        return f"{type(failed).__name__}: {failed}" if failed is not None else None

    @property
    def pending(self) -> bool:
        """Requests not yet covered by a finished attempt."""
        with self._cond:
            return self._attempted < self._requested

    def state(self) -> dict[str, Any]:
        """For status: running, pending, publishes, failures and the last error."""
        with self._cond:
            return {"running": self._running(), "pending": self._attempted < self._requested,
                    "delegated": self.delegate is not None, "publishes": self.publishes, "failures": self.failures,
                    "last_published_at": self.last_published_at, "last_error": self.last_error,
                    "last_error_at": self.last_error_at}

    def succeeded(self) -> None:
        """A publish outside this thread (an explicit sync) published everything committed
        before it: an earlier error is no longer current."""
        with self._cond:
            if self._attempted >= self._requested:
                self._failed = None

    # -- waiting ----------------------------------------------------------------------

    def flush(self) -> None:
        """Publish now what was asked for before this call; raise
        :class:`~retrieval.errors.IndexWriteError` when that publish failed."""
        with self._cond:
            target = self._requested
            if self._attempted < target and self._running():
                self._hurry.set()
                self._cond.wait_for(lambda: self._attempted >= target or not self._running())
            here = self._attempted < target  # no thread (closed, or interpreter shutdown): publish here
        if here:
            self._attempt(target)
        with self._cond:
            failed = self._failed if self._attempted >= target else None
        if failed is not None:
            raise IndexWriteError(f"the background publish of the index failed: {failed}. The documents are stored "
                                  "and every search finds them; the next write, `retrieve sync` or a running worker "
                                  "publishes them") from failed

    def close(self, *, at_exit: bool = False) -> None:
        """Flush, then let the thread end. At interpreter exit an error is logged, not raised."""
        _LIVE.discard(self)
        try:
            self.flush()
        except IndexWriteError as exc:
            if not at_exit:
                raise
            log.error("%s", exc)
        finally:
            with self._cond:
                thread, self._thread = self._thread, None
                self._wake.set()
                self._hurry.set()
            if thread is not None and thread is not threading.current_thread():
                thread.join()

    # -- the thread ---------------------------------------------------------------------

    def _running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        me = threading.current_thread()
        while True:
            woken = self._wake.wait(IDLE_EXIT_S)
            with self._cond:
                if self._thread is not me or (not woken and not self._wake.is_set()):
                    if self._thread is me:
                        self._thread = None
                    self._cond.notify_all()
                    return
            self._hurry.wait(self.delay)  # coalesce the writes that arrive meanwhile
            with self._cond:
                self._wake.clear()
                self._hurry.clear()
                target = self._requested
            if self._attempted < target:
                self._attempt(target)

    def _attempt(self, target: int) -> None:
        """One publish covering requests up to ``target``; writes go on meanwhile (the
        keeper's own locks order it against other publishers)."""
        try:
            self._publish()
        except Exception as exc:  # kept for status and flush, and retried by the next request
            with self._cond:
                self._failed = exc
                self.failures += 1
                self.last_error_at = time.time()
                self._attempted = max(self._attempted, target)
                self._cond.notify_all()
            log.error("could not publish the index in the background: %s (the documents are stored and searches "
                      "find them; the next write or sync retries)", self.last_error)
        else:
            with self._cond:
                self._failed = None
                self.publishes += 1
                self.last_published_at = time.time()
                self._attempted = max(self._attempted, target)
                self._cond.notify_all()
