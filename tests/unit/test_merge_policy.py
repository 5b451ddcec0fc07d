"""The tiered merge policy (``retrieval.index.policy.MergePolicy.plan``) on segments
described by hand: which segments it merges, in which groups, and why.

No FAISS and no files: the policy reads only what a manifest says of each segment
(:class:`SegmentMeta`), so the segments here are metadata alone. Most tests use a small
policy (3 segments per tier, 2 merged at once, tiers from 10 live rows) whose tiers are
easy to count: tier 0 holds up to 29 live rows, tier 1 30 to 89, tier 2 90 to 269.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.config import IndexSettings
from retrieval.index.build import BuildOptions
from retrieval.index.files import FileRef
from retrieval.index.manifest import SegmentMeta
from retrieval.index.policy import Merge, MergePolicy

SMALL = MergePolicy(segments_per_tier=3, max_merge_at_once=2, floor_docs=10, max_tombstones=0.2)
AUTO = BuildOptions(index_type="auto", hnsw_min_docs=1000)


def seg(name: str, live: int, dead: int = 0, kind: str = "flat", exact_by_guard: bool = False) -> SegmentMeta:
    """A segment as a manifest lists it (its files are never read here)."""
    return SegmentMeta(name=name, kind=kind, rows=live + dead, dead=dead,
                       faiss=FileRef(f"segments/{name}.faiss", 1, "0" * 64), ids=FileRef(f"segments/{name}.ids", 1, "0" * 64),
                       tombstones=FileRef(f"tombstones/{name}.del", 1, "0" * 64) if dead else None, origin="sync",
                       exact_by_guard=exact_by_guard)


def test_the_policy_of_a_stores_settings() -> None:
    index = IndexSettings(merge_segments_per_tier=4, merge_max_at_once=3, merge_floor_docs=50, merge_max_tombstones=0.1)
    assert MergePolicy.of(index) == MergePolicy(segments_per_tier=4, max_merge_at_once=3, floor_docs=50,
                                                max_tombstones=0.1)
    assert MergePolicy.of(IndexSettings()) == MergePolicy()


@pytest.mark.parametrize(("live", "tier"), [(0, 0), (1, 0), (10, 0), (29, 0), (30, 1), (89, 1), (90, 2), (269, 2),
                                            (270, 3)])
def test_tiers_are_powers_of_segments_per_tier_above_the_floor(live: int, tier: int) -> None:
    assert SMALL.tier(live) == tier


def test_a_tier_starts_exactly_at_its_power() -> None:
    # log(10**k) / log(10) is not always k in floating point: 1e-9 in tier() absorbs it.
    # (That slack moves a segment one row short of a boundary up a tier only from about
    # 10**9 rows on, so the check stops at 10**8.)
    policy = MergePolicy()
    for k in range(6):
        assert policy.tier(1000 * 10**k) == k
        assert policy.tier(1000 * 10**k - 1) == max(k - 1, 0)


def test_nothing_to_do_within_the_limits() -> None:
    segments = [seg("a", 5), seg("b", 20, dead=5), seg("c", 40), seg("d", 50, dead=10), seg("e", 100)]
    # Two segments in tier 0, two in tier 1 (fewer than 3 each), one in tier 2; 5/25 and
    # 10/60 of the rows dead (at most 0.2); all flat and below hnsw_min_docs.
    assert SMALL.plan(segments, AUTO) == []
    assert SMALL.plan([], AUTO) == []


def test_a_full_tier_merges_its_smallest_segments_at_most_max_merge_at_once() -> None:
    segments = [seg("a", 8), seg("b", 3), seg("c", 5), seg("big", 40), seg("big2", 45)]
    # Tier 0 holds a, b, c: full. Its two smallest (b, c) merge; a stays, and tier 1
    # (two segments) is not full.
    assert SMALL.plan(segments, AUTO) == [Merge("tier", ("b", "c"), 8)]


def test_a_tier_with_more_segments_merges_groups_while_it_stays_full() -> None:
    segments = [seg(name, live) for name, live in [("a", 9), ("b", 1), ("c", 7), ("d", 2), ("e", 4)]]
    # Sorted by size: b d e c a. Groups of 2 while 3 or more remain: (b, d), then (e, c); a is left.
    assert SMALL.plan(segments, AUTO) == [Merge("tier", ("b", "d"), 3), Merge("tier", ("e", "c"), 11)]


def test_a_tier_merges_all_at_once_when_max_merge_at_once_allows() -> None:
    policy = MergePolicy(segments_per_tier=3, max_merge_at_once=10, floor_docs=10)
    segments = [seg("a", 2), seg("b", 2), seg("c", 1), seg("d", 6)]
    # Equal sizes go by name.
    assert policy.plan(segments, AUTO) == [Merge("tier", ("c", "a", "b", "d"), 11)]


def test_each_tier_is_planned_on_its_own() -> None:
    segments = [seg("t0a", 5), seg("t0b", 6), seg("t1a", 30), seg("t1b", 31), seg("t1c", 80), seg("t2", 100)]
    assert SMALL.plan(segments, AUTO) == [Merge("tier", ("t1a", "t1b"), 61)]


def test_a_segment_above_max_tombstones_is_rewritten_alone() -> None:
    segments = [seg("ok", 16, dead=4), seg("worn", 14, dead=6), seg("other", 40)]
    # 4/20 dead is at the limit (0.2, not above it); 6/20 is above: rewritten, with its 14
    # live rows. (Tier 0 holds two segments, tier 1 one: no tier is full.)
    assert SMALL.plan(segments, AUTO) == [Merge("tombstones", ("worn",), 14)]


def test_a_segment_with_no_live_rows_is_dropped_and_not_counted_in_its_tier() -> None:
    segments = [seg("gone", 0, dead=12), seg("a", 5), seg("b", 6)]
    # Three segments would fill tier 0, but an empty one is dropped instead of merged.
    assert SMALL.plan(segments, AUTO) == [Merge("empty", ("gone",), 0)]


def test_a_segment_of_the_wrong_type_for_the_index_type_is_rebuilt() -> None:
    big_flat, small_flat = seg("big_flat", 1500), seg("small_flat", 500)
    guarded = seg("guarded", 1500, exact_by_guard=True)
    graph = seg("graph", 500, kind="hnsw")
    segments = [big_flat, small_flat, guarded, graph]
    policy = MergePolicy(segments_per_tier=10, max_merge_at_once=10, floor_docs=10)
    # auto: a flat segment large enough to be HNSW is rebuilt, unless its recall guard kept it exact.
    assert policy.plan(segments, BuildOptions(index_type="auto", hnsw_min_docs=1000)) == [
        Merge("type", ("big_flat",), 1500)]
    # flat: every HNSW segment is rebuilt exact.
    assert policy.plan(segments, BuildOptions(index_type="flat")) == [Merge("type", ("graph",), 500)]
    # hnsw: every flat segment the guard did not keep exact is rebuilt as a graph.
    assert policy.plan(segments, BuildOptions(index_type="hnsw")) == [
        Merge("type", ("small_flat",), 500), Merge("type", ("big_flat",), 1500)]


def test_merges_come_cheapest_first() -> None:
    segments = [seg("worn", 60, dead=40), seg("gone", 0, dead=3), seg("a", 2), seg("b", 3), seg("c", 9),
                seg("big_flat", 1500)]
    assert SMALL.plan(segments, AUTO) == [
        Merge("empty", ("gone",), 0),
        Merge("tier", ("a", "b"), 5),
        Merge("tombstones", ("worn",), 60),
        Merge("type", ("big_flat",), 1500),
    ]


def test_a_segment_is_in_one_merge_only() -> None:
    # "worn" is in a full tier, has too many tombstones and is flat above hnsw_min_docs.
    policy = MergePolicy(segments_per_tier=3, max_merge_at_once=3, floor_docs=10_000)
    segments = [seg("worn", 1200, dead=800), seg("a", 1100), seg("b", 1300)]
    assert policy.plan(segments, AUTO) == [Merge("tier", ("a", "worn", "b"), 3600)]


SEGMENTS = st.lists(
    st.tuples(st.integers(0, 300), st.integers(0, 100), st.sampled_from(["flat", "hnsw"]), st.booleans()),
    max_size=25,
).map(lambda specs: [seg(f"s{i:02d}", live, dead, kind, guard and kind == "flat")
                     for i, (live, dead, kind, guard) in enumerate(specs)])


@settings(max_examples=300, deadline=None)
@given(segments=SEGMENTS, spt=st.integers(2, 5), at_once=st.integers(2, 6),
       index_type=st.sampled_from(["auto", "flat", "hnsw"]))
def test_every_plan_keeps_the_policys_promises(segments: list[SegmentMeta], spt: int, at_once: int,
                                               index_type: str) -> None:
    policy = MergePolicy(segments_per_tier=spt, max_merge_at_once=at_once, floor_docs=10, max_tombstones=0.2)
    opts = BuildOptions(index_type=index_type, hnsw_min_docs=200)
    merges = policy.plan(segments, opts)
    by_name = {s.name: s for s in segments}
    named = Counter(n for m in merges for n in m.names)
    assert all(count == 1 for count in named.values())  # each segment in one merge at most
    assert [m.live for m in merges] == sorted(m.live for m in merges)
    for m in merges:
        members = [by_name[n] for n in m.names]
        assert m.live == sum(s.live for s in members)
        if m.reason == "tier":
            assert 2 <= len(members) <= at_once and len({policy.tier(s.live) for s in members}) == 1
            assert all(s.live > 0 for s in members)
        else:
            assert len(members) == 1
            s = members[0]
            assert {"empty": s.live == 0, "tombstones": s.tombstone_fraction > 0.2,
                    "type": policy.wrong_type(s, opts)}[m.reason]
    # What is left alone needs nothing: no empty segment, none too worn or of the wrong
    # type, and no tier still holding segments_per_tier segments.
    left = [s for s in segments if s.name not in named]
    assert all(s.live > 0 and s.tombstone_fraction <= 0.2 and not policy.wrong_type(s, opts) for s in left)
    in_tier_merges = {n for m in merges if m.reason == "tier" for n in m.names}
    tiers = Counter(policy.tier(s.live) for s in segments if s.live > 0 and s.name not in in_tier_merges)
    assert all(count < spt for count in tiers.values())
