"""Which documents a filter matches, cached by filter and change-log position."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class MatchCache:
    """Which documents a filter matches, by filter, as of a change-log position.

    A filter's matches change only when documents do, and every change is in the change
    log: an entry made at position ``seq`` is brought to a later position by evaluating
    the filter on the documents changed in between only, so a repeated filter costs what
    changed, not O(store). An entry also keeps the token of the change at its position
    (revision 0004): a database restored from a backup may reach the same position
    through other changes, and such an entry is not used. Bounded by bytes; least
    recently used entries go first.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_refresh: int = 20_000) -> None:
        self.max_bytes = max_bytes
        self.max_refresh = max_refresh  # more changes than this: evaluate from scratch
        self._entries: OrderedDict[str, tuple[int, str | None, np.ndarray]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.refreshes = self.misses = 0

    def get(self, key: str) -> tuple[int, str | None, np.ndarray] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def put(self, key: str, seq: int, token: str | None, ids: np.ndarray) -> None:
        if ids.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[2].nbytes
                if old[0] > seq:  # a reader with a newer snapshot got here first
                    self._entries[key] = old
                    self._bytes += old[2].nbytes
                    return
            self._entries[key] = (seq, token, ids)
            self._bytes += ids.nbytes
            while self._bytes > self.max_bytes and self._entries:
                _, (_, _, gone) = self._entries.popitem(last=False)
                self._bytes -= gone.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
