"""Micro-batching: the queries of concurrent search requests encoded in one model call."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrieval.errors import OverloadedError

if TYPE_CHECKING:
    from retrieval.retriever import Retriever


@dataclass
class _Pending:
    query: str
    k: int
    min_score: float | None
    future: asyncio.Future[list[Any]]


class QueryBatcher:
    """Encodes the queries of concurrent search requests in one model call.

    Requests put their query on a queue and await a future. One task takes whatever is
    queued, waits up to ``max_wait_s`` for more while requests are arriving together
    (never when a lone client is asking, so it adds no latency there), encodes the batch
    on a single dedicated thread and searches all its vectors at once. One encoding
    thread also keeps concurrent requests from oversubscribing the CPU cores, which
    per-request encoding on a thread pool does.
    """

    def __init__(self, retriever: Retriever, *, max_batch: int = 64, max_wait_s: float = 0.002, max_queued: int = 4096) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self.batch_sizes: Callable[[int], None] | None = None  # metrics hook
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_batch = 1

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="query-encoder")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="query-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def search(self, query: str, k: int, min_score: float | None) -> list[Any]:
        assert self._queue is not None, "QueryBatcher.start() was not called"
        if self._queue.qsize() >= self.max_queued:
            raise OverloadedError(f"more than {self.max_queued} searches are waiting; retry shortly")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(query, k, min_score, future))
        return await future

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if self._last_batch <= 1 or remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = [p for p in batch if not p.future.done()]  # clients that went away
            if not batch:
                continue
            self._last_batch = len(batch)
            if self.batch_sizes is not None:
                self.batch_sizes(len(batch))
            try:
                results = await loop.run_in_executor(self._executor, self._search, batch)
            except Exception as exc:  # handed to every waiting request, which reports it
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            for p, hits in zip(batch, results):
                if not p.future.done():
                    p.future.set_result(hits)

    def _search(self, batch: Sequence[_Pending]) -> list[list[Any]]:
        # One search at the largest k, cut per request: results are sorted best first,
        # so the top k of the top K are the top k. min_score is each request's own, so
        # the shared search keeps everything (-inf) and each request filters its part.
        k_max = max(p.k for p in batch)
        rows = self.retriever.search_many([p.query for p in batch], k_max, min_score=float("-inf"))
        return [
            [h for h in hits[: p.k] if p.min_score is None or h.score >= p.min_score]
            for p, hits in zip(batch, rows)
        ]
