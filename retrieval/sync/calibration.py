"""Real queries for the recall guard: the query sample, recorded without costing searches.

The recall guard measures an approximate segment against exact search when it is built.
Queries made from the segment's own vectors run harder than real ones, so searches
record their query vectors, and the guard calibrates with the newest of them
(:func:`calibration_queries`) once the store has enough.

:class:`QueryRecorder` is the search side: a search by text adds its query vectors to an
in-memory buffer, and the buffer is written in one transaction when it holds
:attr:`QueryRecorder.flush_queries` queries or :attr:`QueryRecorder.flush_seconds` have
passed since the last write, when the retriever closes, and before a sync or merge (which
may read the sample). A write never makes a search wait or fail: it does not wait for
another writer's lock, a failed write drops its batch, and a read-only store is never
written. The query's text is held and stored only with ``search.log_queries``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np

from retrieval.config import SearchSettings
from retrieval.errors import RetrievalError
from retrieval.store.repository import Store

log = logging.getLogger("retrieval")

# The fewest recorded queries the guard calibrates with; with fewer it falls back to
# queries made from documents.
MIN_QUERIES = 50


class QueryRecorder:
    """The query sample's write buffer for one store (thread-safe; see the module doc)."""

    flush_queries = 32
    flush_seconds = 60.0

    def __init__(self, store: Store, settings: SearchSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.keep = settings.query_sample
        self.texts = settings.log_queries
        self._clock = clock
        # The newest queries only: what a trim would keep anyway (a store that refuses
        # every write never holds more than this).
        self._buffer: deque[tuple[str, bytes, int, str | None]] = deque(maxlen=max(self.keep, self.flush_queries))
        self._lock = threading.Lock()  # the buffer
        self._writing = threading.Lock()  # one write at a time
        self._last = clock()

    @property
    def enabled(self) -> bool:
        """Whether searches are recorded: a sample is kept, and this process may write."""
        return self.keep > 0 and not self.store.readonly

    def pending(self) -> int:
        """Queries held, not written yet."""
        with self._lock:
            return len(self._buffer)

    def add(self, model_key: str, vectors: np.ndarray, texts: Sequence[str] | None = None) -> None:
        """Hold the query vectors of one search (``texts`` beside them, kept only with
        ``log_queries``); write the buffer when it is due, unless another thread is
        writing it. Never raises for the store's sake."""
        if not self.enabled or vectors.ndim != 2 or not len(vectors):
            return
        matrix = np.asarray(vectors, dtype="<f4")
        with self._lock:
            for i, row in enumerate(matrix):
                text = texts[i] if self.texts and texts is not None and i < len(texts) else None
                self._buffer.append((model_key, row.tobytes(), matrix.shape[1], text))
            due = len(self._buffer) >= self.flush_queries or self._clock() - self._last >= self.flush_seconds
        if due:
            self.flush(wait=False)

    def flush(self, *, wait: bool = True) -> int:
        """Write what the buffer holds in one transaction (``wait``: after a write another
        thread has started; otherwise leave it to that one). Returns queries written;
        a batch the store refused is dropped (logged at debug level)."""
        if not self._writing.acquire(blocking=wait):
            return 0
        try:
            with self._lock:
                batch = list(self._buffer)
                self._buffer.clear()
                self._last = self._clock()
            if not batch or not self.enabled:
                return 0
            try:
                return self.store.record_query_groups(_groups(batch), self.keep)
            except Exception as exc:  # a sample is never worth a failed search
                log.debug("query sample: dropped %d queries (%s)", len(batch), exc,
                          exc_info=not isinstance(exc, RetrievalError))
                return 0
        finally:
            self._writing.release()


def _groups(batch: list[tuple[str, bytes, int, str | None]]) -> list[tuple[str, np.ndarray, list[str | None]]]:
    """The batch by model (oldest first), each query vector once: its newest occurrence."""
    newest: dict[tuple[str, bytes], tuple[str, bytes, int, str | None]] = {}
    for model, blob, dim, text in batch:
        newest.pop((model, blob), None)  # moves to its newest place
        newest[(model, blob)] = (model, blob, dim, text)
    by_model: dict[str, list[tuple[bytes, int, str | None]]] = {}
    for model, blob, dim, text in newest.values():
        by_model.setdefault(model, []).append((blob, dim, text))
    groups = []
    for model, rows in by_model.items():
        dim = rows[-1][1]
        rows = [r for r in rows if r[1] == dim]  # a model has one dimension
        matrix = np.frombuffer(b"".join(r[0] for r in rows), dtype="<f4").reshape(len(rows), dim)
        groups.append((model, matrix, [r[2] for r in rows]))
    return groups


def calibration_queries(store: Store, model_key: str, dim: int, limit: int = 1000, *,
                        minimum: int = MIN_QUERIES, pending: QueryRecorder | None = None) -> tuple[np.ndarray, str]:
    """The recall guard's queries: the newest ``limit`` recorded query vectors of
    ``model_key`` (float32, shape (n, dim), newest first) and their label
    ``"queries:N"``, when the store has at least ``minimum`` of them (or ``limit``,
    when that is fewer); else an empty
    (0, dim) array and ``""`` (the guard then makes its own). ``pending``: a recorder
    whose buffer is written first."""
    empty = np.empty((0, dim), np.float32)
    if pending is not None:
        pending.flush()
    try:
        vectors = store.recent_queries(model_key, limit, dim)
    except RetrievalError as exc:  # the guard has its own queries: a build never fails for these
        log.debug("query sample unreadable (%s); calibrating without it", exc)
        return empty, ""
    if len(vectors) < max(1, min(minimum, limit)):
        return empty, ""
    return vectors, f"queries:{len(vectors)}"
