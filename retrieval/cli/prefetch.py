"""Encode a cold process's query in parallel with everything else it has to do.

A cold ``retrieve search`` spends about as long importing SQLAlchemy and FAISS, opening
the store and reading the index as it does importing the encoder's runtime, loading the
compiled model and running it once. Threads cannot overlap these: imports and most of
the Python work hold the GIL. A forked child can. Right after the command starts (only
click and the settings are loaded, no runtime, no threads), :func:`start` forks; the child
loads the encoder the settings choose and sends back the query's vector and model key
through a pipe while the parent opens the store and the index. (Nothing heavy is
imported before the fork, numpy included: its BLAS starts threads.) The parent uses the
vector only when its key matches the index's; otherwise, and whenever the child fails,
times out or is not eligible, it encodes in-process as usual, so errors are reported
exactly as without this.

The child only runs the fast path: an ONNX Runtime or OpenVINO encoder whose export is
already cached. torch (seconds to import) and a first-time export stay in the parent.
Linux only (fork without exec is unsafe with some macOS frameworks), and only in a
process that has loaded no runtime and started no threads (CliRunner tests run in a
process that has: there it is skipped).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from retrieval.retriever import Retriever
    from retrieval.search.hits import Hit

RUNTIMES = ("torch", "onnxruntime", "openvino", "sentence_transformers")
SKIPPED = 3  # the child's exit status when the fast path does not apply


def eligible() -> bool:
    """Whether forking here is safe and useful."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and threading.active_count() == 1
        and not any(name in sys.modules for name in RUNTIMES)
        and os.environ.get("RETRIEVAL_PREFETCH", "1") != "0"
    )


class QueryPrefetch:
    """A forked child encoding one query; :meth:`result` collects it."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self._done = False

    def result(self, timeout: float = 30.0) -> tuple[str, np.ndarray] | None:
        """``(model_key, vector)``, or None when the child skipped, failed or timed out."""
        import numpy as np

        if self._done:
            return None
        try:
            data = b""
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    return None
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    break
                data += chunk
            if len(data) < 4:
                return None
            (header_len,) = struct.unpack("<I", data[:4])
            header = json.loads(data[4 : 4 + header_len])
            vector = np.frombuffer(data[4 + header_len :], dtype=np.float32).reshape(1, int(header["dim"]))
            return str(header["model_key"]), vector.copy()
        except (OSError, ValueError, KeyError):
            return None
        finally:
            self.close()

    def hits(self, retriever: Retriever, query: str, k: int | None, *, min_score: float | None,
             where: Any) -> list[Hit] | None:
        """The search, with the child's vector when its model key is the index's (the query
        checked as every search's is); None when the parent must encode it itself (the
        child skipped or failed, or the index holds other vectors)."""
        import logging

        encoded = self.result()
        found = None
        if encoded is not None:
            retriever.check_search([query], k, min_score, "dense", None, where)
            key, vector = encoded
            version = retriever.current_index()
            if version.manifest.model_key == key and vector.shape == (1, version.manifest.dim):
                found = retriever.search_vectors(vector, k, min_score=min_score, where=where)[0]
                retriever.queries.add(key, vector, [query])  # a search by text, encoded in the child
        logging.getLogger("retrieval").info("query encoded %s", "in a forked child" if found is not None else
                                            "in-process (the child skipped or failed)")
        return found

    def close(self) -> None:
        """Reap the child (killing it if it is still working)."""
        if self._done:
            return
        self._done = True
        try:
            os.close(self.fd)
        except OSError:
            pass
        try:
            if os.waitpid(self.pid, os.WNOHANG) == (0, 0):
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def start(settings: Any, query: str) -> QueryPrefetch | None:
    """Fork a child that encodes ``query`` with the encoder ``settings`` choose; None if
    this process is not :func:`eligible`."""
    if not eligible():
        return None
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        return QueryPrefetch(pid, read_fd)
    # -- the child: never returns, never runs the parent's atexit handlers or flushes its buffers.
    status = 1
    try:
        os.close(read_fd)
        status = _child(settings, query, write_fd)
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _child(settings: Any, query: str, fd: int) -> int:
    import numpy as np

    from retrieval.embed import encoder_for, plan_for, resolve_model
    from retrieval.embed.export import is_exported
    from retrieval.index.store import IndexStore

    prefer = IndexStore(settings.store.index_dir).model_key()
    # Decided before building the encoder: building a runtime encoder without a cached
    # export would export (import torch) here instead of in the parent. The test encoder
    # (hash) needs no help: it encodes in microseconds.
    chosen = plan_for(settings, prefer_key=prefer)
    if chosen.backend in ("torch", "hash", "external") or not is_exported(resolve_model(settings.encoder.model),
                                                               "int8" if chosen.precision == "int8" else "fp32"):
        return SKIPPED
    encoder = encoder_for(settings, prefer_key=prefer)
    vector = np.ascontiguousarray(encoder.encode_queries([query]), dtype=np.float32)
    header = json.dumps({"model_key": encoder.model_key, "dim": int(vector.shape[1])}).encode()
    payload = struct.pack("<I", len(header)) + header + vector.tobytes()
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
    os.close(fd)
    return 0
