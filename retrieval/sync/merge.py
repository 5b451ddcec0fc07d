"""Merges: replace some segments by one built from their live rows.

A merge reads and builds without the sync lock (syncs go on publishing) and takes it
only to switch the manifest, carrying over the tombstones that syncs added to its inputs
meanwhile, so nothing changed during the merge comes back. The caller holds the store's
merge lock (one merge at a time per store).

Its inputs are read a block at a time in id order (:class:`MergedRows`): memory holds the
merged segment being built, not its inputs (see ``index.merge_memory_mb``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.index.build import BuildOptions, Calibration
from retrieval.index.manifest import SegmentMeta
from retrieval.index.policy import Merge
from retrieval.index.segment import IndexVersion, SegmentView
from retrieval.index.store import IndexStore

log = logging.getLogger("retrieval.sync")


@dataclass
class MergeReport:
    reason: str
    inputs: int
    rows_in: int
    live: int
    carried_tombstones: int = 0
    kind: str = ""
    recall: float | None = None
    ef_search: int | None = None
    nprobe: int | None = None
    rescore: int | None = None
    calibration: str | None = None
    seconds: float = 0.0
    bytes_written: int = 0
    version: str | None = None
    abandoned: str | None = None  # why the result was not published
    segments_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class MergedRows:
    """The live rows of some segments, in ascending id order, read a block at a time: each
    block reads one contiguous range of rows from each input holding some of it. Memory
    holds three numbers a row (id, input, position) and the blocks in flight."""

    def __init__(self, views: list[SegmentView], dim: int) -> None:
        self.views = views
        self._dim = dim
        live = [np.flatnonzero(~v.dead) for v in views]
        ids = np.concatenate([v.segment.ids[p] for v, p in zip(views, live)]) if views else np.empty(0, np.int64)
        order = np.argsort(ids, kind="stable")
        self.ids = ids[order]
        self._source = np.concatenate([np.full(len(p), j, np.int16) for j, p in enumerate(live)])[order] \
            if views else np.empty(0, np.int16)
        self._position = np.concatenate(live)[order] if views else np.empty(0, np.int64)

    @property
    def rows(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self._dim

    def blocks(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, self.rows, size):
            source = self._source[start:start + size]
            position = self._position[start:start + size]
            block = np.empty((len(source), self._dim), np.float32)
            for j in np.unique(source).tolist():
                mine = source == j
                rows = position[mine]
                first = int(rows[0])  # ascending: a segment's ids are sorted
                block[mine] = self.views[j].segment.read_rows(first, int(rows[-1]) - first + 1)[rows - first]
            yield block


def held_out(base: IndexVersion, names: tuple[str, ...], n: int, minimum: int = 50) -> Calibration | None:
    """Vectors of up to ``n`` documents outside the segments ``names``, drawn evenly from
    the other segments' live rows (the recall guard's queries when the store has no real
    queries); None when there are fewer than ``minimum``."""
    others = [v for v in base.views if v.meta.name not in names and v.live]
    total = sum(v.live for v in others)
    if total < minimum:
        return None
    rng = np.random.default_rng(total)
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    parts, start = [], 0
    for v in others:
        lo, hi = np.searchsorted(picks, [start, start + v.live])
        if hi > lo:
            rows = np.flatnonzero(~v.dead)[picks[lo:hi] - start]
            parts.append(v.segment.vectors_of(rows))
        start += v.live
    return Calibration(np.ascontiguousarray(np.concatenate(parts), dtype=np.float32), "held-out")


def merge(index_store: IndexStore, plan: Merge, opts: BuildOptions, sync_lock: Callable[[], AbstractContextManager[Any]],
          *, progress: Callable[[str], None] | None = None,
          calibration: Callable[[], Calibration | None] | None = None) -> MergeReport:
    """Replace the segments of ``plan`` by one built from their live rows. The caller holds
    the store's merge lock (:meth:`Retriever.merge_lock`).

    Reading and building run without ``sync_lock`` (syncs go on publishing); the switch
    takes it, re-reads the current generation and tombstones the merged rows of every
    document a sync changed meanwhile, so nothing changed during the merge comes back.

    The merged segment's recall guard uses ``calibration()`` (the store's recent real
    queries) when it gives some, else documents of the other segments (:func:`held_out`).
    """
    t0 = time.perf_counter()
    written = index_store.bytes_written
    base = index_store.load()
    if base is None:
        return MergeReport(plan.reason, 0, 0, 0, abandoned="there is no index")
    views = [v for v in base.views if v.meta.name in plan.names]
    report = MergeReport(plan.reason, len(views), sum(v.meta.rows for v in views), sum(v.live for v in views))
    if len(views) != len(plan.names):
        report.abandoned = "the segments changed before the merge started"
        return report
    if progress:
        progress(f"merging {plan.describe()}")
    for v in views:
        index_store.check_segment_file(v.meta)  # a merge input is checked in full before it is read
    source = MergedRows(views, base.manifest.dim)
    merged: SegmentMeta | None = None
    if source.rows:
        # Segments the recall guard kept exact stay exact when merged into HNSW (their
        # vectors do not suit HNSW, and a larger graph only does worse).
        kind = opts.kind_for(source.rows)
        guarded = kind in ("hnsw", "hnsw_sq") and any(v.meta.exact_by_guard for v in views)
        queries = None
        if kind != "flat" and not guarded:
            queries = (calibration() if calibration else None) or held_out(base, plan.names, opts.recall_queries)
        merged = index_store.write_rows(source.ids, source, opts=opts, origin="merge", generation=base.manifest.generation,
                                        exact_by_guard=guarded, calibration=queries)
        report.kind, report.recall, report.ef_search = merged.kind, merged.recall, merged.ef_search
        report.nprobe, report.rescore, report.calibration = merged.nprobe, merged.rescore, merged.calibration
    del source
    with sync_lock():
        current = index_store.load()
        if current is None or current.manifest.lineage != base.manifest.lineage:
            report.abandoned = "the index was rebuilt meanwhile"
            return report
        now = {v.meta.name: v for v in current.views}
        generation = index_store.next_generation()
        newly_dead = [v.segment.ids[now[v.meta.name].dead & ~v.dead] for v in views if v.meta.name in now]
        # A segment that became fully dead meanwhile was dropped by the sync: all its rows died.
        newly_dead += [v.segment.ids[~v.dead] for v in views if v.meta.name not in now]
        carried = np.unique(np.concatenate(newly_dead)) if newly_dead else np.empty(0, np.int64)
        segments = [m for m in current.manifest.segments if m.name not in plan.names]
        if merged is not None:
            seg = index_store.open_segment(merged)
            rows = seg.rows_of(carried)
            report.carried_tombstones = len(rows)
            if len(rows) < merged.rows:
                if len(rows):
                    dead = np.zeros(merged.rows, bool)
                    dead[rows] = True
                    merged = index_store.with_dead(merged, dead, generation)
                segments.append(merged)
        report.seconds = time.perf_counter() - t0
        last = {"at": time.time(), "reason": plan.reason, "inputs": len(views), "rows": report.live,
                "kind": report.kind or None, "seconds": round(report.seconds, 3)}
        manifest = current.manifest.successor(generation, index_type=opts.index_type, segments=tuple(segments),
                                              last_merge=last)
        version = index_store.commit(manifest)
    report.version = version.manifest.version
    report.bytes_written = index_store.bytes_written - written
    log.info("merged %s into %s (%s, %d tombstones carried) in %.2fs", plan.describe(), report.version,
             report.kind or "dropped", report.carried_tombstones, report.seconds)
    return report

