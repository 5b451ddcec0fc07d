"""Merges: replace some segments by one built from their live rows.

A merge reads and builds without the sync lock (syncs go on publishing) and takes it
only to switch the manifest, carrying over the tombstones that syncs added to its inputs
meanwhile, so nothing changed during the merge comes back. The caller holds the store's
merge lock (one merge at a time per store).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.index.build import BuildOptions
from retrieval.index.manifest import SegmentMeta
from retrieval.index.policy import Merge
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
    seconds: float = 0.0
    bytes_written: int = 0
    version: str | None = None
    abandoned: str | None = None  # why the result was not published
    segments_after: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge(index_store: IndexStore, plan: Merge, opts: BuildOptions, sync_lock: Callable[[], AbstractContextManager[Any]],
          *, progress: Callable[[str], None] | None = None) -> MergeReport:
    """Replace the segments of ``plan`` by one built from their live rows. The caller holds
    the store's merge lock (:meth:`Retriever.merge_lock`).

    Reading and building run without ``sync_lock`` (syncs go on publishing); the switch
    takes it, re-reads the current generation and tombstones the merged rows of every
    document a sync changed meanwhile, so nothing changed during the merge comes back.
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
    ids = np.concatenate([v.segment.ids[~v.dead] for v in views]) if views else np.empty(0, np.int64)
    merged: SegmentMeta | None = None
    if len(ids):
        vectors = np.concatenate([v.segment.vectors()[~v.dead] for v in views])
        # Segments the recall guard kept exact stay exact when merged (their vectors do not
        # suit HNSW, and a larger graph only does worse).
        guarded = opts.kind_for(len(ids)) == "hnsw" and any(v.meta.exact_by_guard for v in views)
        merged = index_store.write_segment(ids, vectors, opts=opts, origin="merge", generation=base.manifest.generation,
                                           exact_by_guard=guarded)
        del vectors
        report.kind, report.recall, report.ef_search = merged.kind, merged.recall, merged.ef_search
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

