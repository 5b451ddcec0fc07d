"""Which segments to merge: a tiered policy after Lucene's TieredMergePolicy.

Segments are grouped into size tiers (powers of ``segments_per_tier`` above
``floor_docs``, counting live rows). A tier holding ``segments_per_tier`` segments or
more gets its smallest ``max_merge_at_once`` merged into one, which lands a tier up. So a
store of N documents flushed in batches of B keeps about ``segments_per_tier`` segments
per tier over log(N / B) tiers, and each document is rewritten about once per tier (the
write amplification). Besides the tiers:

* a segment with more than ``max_tombstones`` of its rows dead is rewritten without them
  (its neighbours are not touched);
* a segment with no live rows is dropped (no write at all);
* under ``index_type: auto``, an exact segment large enough to be approximate is rebuilt
  as HNSW (a store converted from the single-file format), unless its recall guard
  already kept it exact.

The policy only chooses; :mod:`retrieval.sync` runs the merges. No FAISS and no SQL here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from retrieval.config import IndexSettings
from retrieval.index.build import BuildOptions
from retrieval.index.manifest import SegmentMeta


@dataclass(frozen=True)
class Merge:
    reason: str  # tier | tombstones | empty | type
    names: tuple[str, ...]
    live: int  # rows the merged segment will hold

    def describe(self) -> str:
        return f"{self.reason}: {len(self.names)} segments, {self.live} live rows"


@dataclass(frozen=True)
class MergePolicy:
    segments_per_tier: int = 10
    max_merge_at_once: int = 10
    floor_docs: int = 1000
    max_tombstones: float = 0.2

    @classmethod
    def of(cls, index: IndexSettings) -> MergePolicy:
        """The merge policy of a store with these index settings."""
        return cls(segments_per_tier=index.merge_segments_per_tier, max_merge_at_once=index.merge_max_at_once,
                   floor_docs=index.merge_floor_docs, max_tombstones=index.merge_max_tombstones)

    def tier(self, live: int) -> int:
        return int(math.log(max(live, self.floor_docs) / self.floor_docs, self.segments_per_tier) + 1e-9)

    def plan(self, segments: Sequence[SegmentMeta], opts: BuildOptions) -> list[Merge]:
        """Merges to run now, cheapest first; each segment is in at most one."""
        merges: list[Merge] = []
        taken: set[str] = set()
        for s in segments:
            if s.live == 0:
                merges.append(Merge("empty", (s.name,), 0))
                taken.add(s.name)
        tiers: dict[int, list[SegmentMeta]] = {}
        for s in segments:
            if s.name not in taken:
                tiers.setdefault(self.tier(s.live), []).append(s)
        for level in sorted(tiers):
            members = sorted(tiers[level], key=lambda s: (s.live, s.name))
            while len(members) >= self.segments_per_tier:
                group, members = members[: self.max_merge_at_once], members[self.max_merge_at_once:]
                merges.append(Merge("tier", tuple(s.name for s in group), sum(s.live for s in group)))
                taken.update(s.name for s in group)
        for s in segments:
            if s.name in taken:
                continue
            if s.tombstone_fraction > self.max_tombstones:
                merges.append(Merge("tombstones", (s.name,), s.live))
            elif self.wrong_type(s, opts):
                merges.append(Merge("type", (s.name,), s.live))
        return sorted(merges, key=lambda m: m.live)

    @staticmethod
    def wrong_type(s: SegmentMeta, opts: BuildOptions) -> bool:
        """An exact segment that should be approximate (unless its guard kept it exact), or
        an approximate one under ``index_type: flat``."""
        if s.kind != "flat":
            return opts.index_type == "flat"
        return not s.exact_by_guard and opts.kind_for(s.live) == "hnsw"
