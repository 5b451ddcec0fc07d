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
  already kept it exact, and a segment large enough to be compressed is rebuilt so; under
  another type, a segment of another kind is rebuilt as that type.

No merge makes a segment larger than a build can hold within ``index.merge_memory_mb``
(:meth:`BuildOptions.max_rows`, after Lucene's maximum merged segment size): a segment
over half of that takes part in no tier merge, and a tier merges the smallest segments
that fit. So a large store settles into segments of about that size, and every merge
holds a bounded amount of memory, whatever the store's size.

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

    def plan(self, segments: Sequence[SegmentMeta], opts: BuildOptions, dim: int = 384) -> list[Merge]:
        """Merges to run now, cheapest first; each segment is in at most one. ``dim``: the
        vectors' dimension (what a row costs a build)."""
        merges: list[Merge] = []
        taken: set[str] = set()
        for s in segments:
            if s.live == 0:
                merges.append(Merge("empty", (s.name,), 0))
                taken.add(s.name)
        tiers: dict[int, list[SegmentMeta]] = {}
        for s in segments:
            if s.name not in taken and s.live <= self.cap([s], opts, dim) // 2:
                tiers.setdefault(self.tier(s.live), []).append(s)
        for level in sorted(tiers):
            members = sorted(tiers[level], key=lambda s: (s.live, s.name))
            while len(members) >= self.segments_per_tier:
                group: list[SegmentMeta] = []
                for s in members[: self.max_merge_at_once]:
                    if sum(g.live for g in group) + s.live > self.cap([*group, s], opts, dim):
                        break
                    group.append(s)
                if len(group) < 2:
                    break
                members = members[len(group):]
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

    def plan_fewest(self, segments: Sequence[SegmentMeta], opts: BuildOptions, dim: int = 384) -> list[Merge]:
        """Merges towards the fewest segments the memory cap allows (Lucene's forceMerge):
        segments, smallest first, packed into groups of at most the cap's live rows; a
        group of one is rewritten only to drop its dead rows. Run again until empty."""
        merges: list[Merge] = []
        group: list[SegmentMeta] = []

        def close() -> None:
            if len(group) > 1 or (group and group[0].dead):
                merges.append(Merge("fewest" if len(group) > 1 else "tombstones", tuple(s.name for s in group),
                                    sum(s.live for s in group)))

        for s in sorted(segments, key=lambda s: (s.live, s.name)):
            if group and sum(g.live for g in group) + s.live > self.cap([*group, s], opts, dim):
                close()
                group = []
            group.append(s)
        close()
        return sorted(merges, key=lambda m: m.live)

    def cap(self, group: Sequence[SegmentMeta], opts: BuildOptions, dim: int) -> int:
        """The most live rows a merge of ``group`` may make: :meth:`max_rows`, or what an
        exact build holds when one of them was kept exact by its guard (the merge is exact
        then, its float vectors in memory)."""
        if any(s.exact_by_guard for s in group):
            return opts.max_rows("flat", dim)
        return self.max_rows(opts, dim)

    @staticmethod
    def max_rows(opts: BuildOptions, dim: int) -> int:
        """The largest segment a merge may make: what a build of the kind such a segment
        would be holds a row, within ``merge_memory_mb``."""
        kind = "hnsw_sq" if opts.index_type == "auto" else opts.index_type
        cap = opts.max_rows(kind, dim)
        if opts.index_type == "auto":
            # Below compressed_min_docs a merged segment is HNSW (or exact): that build must fit too.
            below = min(cap, opts.compressed_min_docs - 1)
            if opts.max_rows("hnsw", dim) < below:
                cap = min(cap, opts.max_rows("hnsw", dim))
        return cap

    @staticmethod
    def wrong_type(s: SegmentMeta, opts: BuildOptions) -> bool:
        """A segment of another kind than ``index_type`` asks for: under ``auto``, an exact
        one large enough to be approximate, or an uncompressed one large enough to be
        compressed; under another type, any of another kind. Never one the guard kept
        exact: rebuilt, it would be kept exact again (and again, at every merge pass)."""
        if s.kind == "flat" and s.exact_by_guard:
            return False
        if opts.index_type != "auto":
            return s.kind != opts.index_type
        want = opts.kind_for(s.live)
        if want == "hnsw_sq":
            return s.kind not in ("hnsw_sq", "ivf")
        return s.kind == "flat" and want == "hnsw"
