"""The contract every segment kind keeps, whatever its FAISS index: one suite run over each
kind the index builds (as txtai's ``testann/testdense.py`` runs one suite over every ANN).

A segment is built from known vectors through :meth:`IndexStore.write_segment`, published
in a manifest and opened, and then:

* it holds every row, its ids ascending, and ``rows_of`` finds the rows of ids;
* a search returns the brute-force top-k (exactly on an exact kind; on an approximate
  one with a wide search, and with the segment's own efSearch at the recall its guard
  recorded), with scores that are inner products of the stored vectors;
* tombstones (``with_dead``), an ``allow`` list and ``exclude`` take rows out, and the
  search is still the brute force over what is left;
* ``vectors()``, and ``read_rows`` (a merge's reads), give back the vectors it was built from;
* the file checksum passes, and a flipped byte or a cut file is caught;
* a fresh ``IndexStore`` reopening the folder answers the same.

To add a kind (IVF, passages): add one :class:`Kind` to :data:`KINDS` that names it, says
how to build it and which search arguments make its search exhaustive on this small data;
``write_segment(kind=...)`` must build it and ``IndexStore.open_segment`` open it. No test
below names a kind. A clause a kind breaks today is listed in its ``breaches``, with the
reason, and its test is an xfail(strict=True) there: it fails once the kind is fixed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.errors import IndexCorruptError
from retrieval.index.build import BuildOptions
from retrieval.index.manifest import Manifest, SegmentMeta
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore


@dataclass(frozen=True)
class Kind:
    name: str  # what SegmentMeta.kind says, and what write_segment(kind=...) builds
    opts: BuildOptions  # threads=1: a multi-threaded HNSW build is not deterministic
    exact: bool  # whether every search is exact, whatever its arguments
    # IndexVersion.search arguments that make the search exhaustive on the data here.
    exhaustive: dict[str, Any] = field(default_factory=dict)
    # Clauses the kind breaks today: test name (or "name:param" for one parameter) -> why.
    # Those tests xfail strictly, so they fail loudly once the code is fixed (then delete
    # the entry).
    breaches: dict[str, str] = field(default_factory=dict)


KINDS = [
    Kind("flat", BuildOptions(index_type="flat", threads=1), exact=True),
    Kind("hnsw", BuildOptions(index_type="hnsw", threads=1), exact=False, exhaustive={"ef_search": 2048},
         breaches={f"test_ties_go_to_the_lower_id:{plan}": (
             "IndexVersion.search promises ties by id, but an HNSW segment hands back n = min(k, live) results "
             "and which of several equal scores make the cut is FAISS's graph search's choice, with or without "
             "a selector: duplicate texts at the k-th place come back in no particular order")
             for plan in ("plain", "graph")}),
    # Compressed: 8-bit codes searched by a graph or an inverted file, every candidate
    # re-scored from the float vectors. The IVF one is held to recall 1.0 by its guard,
    # which on 600 rows probes every list: its search is then exhaustive as built. The
    # graph's guard, on midpoints of 600 random vectors, meets 0.99 at efSearch 16, where
    # the fresh directions here find 0.967: held to 1.0 it searches wide enough.
    Kind("hnsw_sq", BuildOptions(index_type="hnsw_sq", threads=1, min_recall=1.0), exact=False,
         exhaustive={"ef_search": 2048}),
    Kind("ivf", BuildOptions(index_type="ivf", threads=1, min_recall=1.0), exact=False),
]

DIM = 32
ROWS = 600
K = 10
MODEL_KEY = f"contract|{DIM}"


def unit(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True), dtype=np.float32)


RNG = np.random.default_rng(20240611)
IDS = RNG.choice(np.arange(1, 50_000), size=ROWS, replace=False).astype(np.int64)  # unsorted, with gaps
VECTORS = unit(RNG.standard_normal((ROWS, DIM)))
# Queries: fresh directions, and some of the stored vectors themselves.
QUERIES = np.concatenate([unit(RNG.standard_normal((24, DIM))), VECTORS[[3, 99, 400]]])
BY_ID = dict(zip(IDS.tolist(), VECTORS))


def brute_force(queries: np.ndarray, keep: np.ndarray | None = None, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The exact top-k (scores, ids) over the rows whose ids are in ``keep`` (all by default):
    best first, ties by id."""
    ids, vectors = IDS, VECTORS
    if keep is not None:
        mask = np.isin(IDS, keep)
        ids, vectors = IDS[mask], VECTORS[mask]
    scores = queries @ vectors.T
    order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


def assert_brute_force(got: tuple[np.ndarray, np.ndarray], queries: np.ndarray, keep: np.ndarray | None = None,
                       k: int = K) -> None:
    """``got`` is the brute-force top-k over ``keep``: distinct ids of kept rows, each
    scored with the inner product of its stored vector, and at each position a document
    whose exact score is the k-best's there. So the ids are the brute force's, in its
    order, except where two documents score the same (to float32's rounding)."""
    want_scores, want_ids = brute_force(queries, keep, k)
    scores, ids = got
    assert ids.shape == want_ids.shape, (ids.shape, want_ids.shape)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    kept = set((IDS if keep is None else keep).tolist())
    for qi, row in enumerate(ids.tolist()):
        assert len(set(row)) == len(row) and set(row) <= kept, (qi, row)
        exact = [float(queries[qi] @ BY_ID[i]) for i in row]
        np.testing.assert_allclose(exact, scores[qi], atol=1e-5)
        np.testing.assert_allclose(exact, want_scores[qi], atol=1e-5)


def recall(got_ids: np.ndarray, want_ids: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got_ids.tolist(), want_ids.tolist())]))


@dataclass
class Built:
    """A segment of one kind over :data:`VECTORS`, published and opened."""

    kind: Kind
    store: IndexStore
    meta: SegmentMeta
    version: IndexVersion

    @property
    def root(self) -> Path:
        return self.store.root

    def search(self, queries: np.ndarray = QUERIES, k: int = K, exhaustive: bool = True,
               **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        args = {**(self.kind.exhaustive if exhaustive else {}), **kwargs}
        return self.version.search(queries, k, **args)

    def publish(self, *segments: SegmentMeta, generation: int) -> IndexVersion:
        self.version = self.store.commit(manifest(self.kind, *segments, generation=generation))
        return self.version


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    name = request.node.originalname
    params = getattr(request.node, "callspec", None)
    keys = [name] + [f"{name}:{v}" for v in (params.params.values() if params else ()) if isinstance(v, str)]
    reason = next((request.param.breaches[k] for k in keys if k in request.param.breaches), None)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    return request.param


def build(kind: Kind, root: Path, ids: np.ndarray = IDS, vectors: np.ndarray = VECTORS) -> tuple[IndexStore, SegmentMeta]:
    """A segment of ``kind`` over ``vectors``, written (not yet published) in the index folder ``root``."""
    store = IndexStore(root)
    return store, store.write_segment(ids, vectors, opts=kind.opts, origin="build", generation=1, kind=kind.name)


def manifest(kind: Kind, *segments: SegmentMeta, generation: int) -> Manifest:
    return Manifest(generation=generation, model_key=MODEL_KEY, dim=DIM, index_type=kind.opts.index_type, last_seq=0,
                    segments=segments, created_at=0.0)


@pytest.fixture
def built(kind: Kind, tmp_path: Path) -> Built:
    store, meta = build(kind, tmp_path / "index")
    return Built(kind, store, meta, store.commit(manifest(kind, meta, generation=1)))


# -- what a segment holds -------------------------------------------------------------


def test_the_segment_holds_every_row_of_its_kind(built: Built) -> None:
    meta = built.meta
    assert (meta.kind, meta.rows, meta.dead, meta.live, meta.tombstones) == (built.kind.name, ROWS, 0, ROWS, None)
    assert not meta.exact_by_guard, "the recall guard kept the segment exact: the suite would not test this kind"
    assert meta.faiss.bytes == (built.root / meta.faiss.path).stat().st_size
    [view] = built.version.views
    assert view.segment.rows == ROWS and built.version.count == ROWS
    assert (meta.recall is None) if built.kind.exact else (meta.recall is not None and 0 < meta.recall <= 1)


def test_ids_are_ascending_and_vectors_round_trip(built: Built) -> None:
    seg = built.version.views[0].segment
    order = np.argsort(IDS)
    assert np.array_equal(seg.ids, IDS[order]) and seg.ids.dtype == np.int64
    assert np.all(np.diff(seg.ids) > 0)
    assert np.array_equal(seg.vectors(), VECTORS[order])  # float32 as given, bit for bit
    # A merge reads them in blocks from the file, not the mapping: the same rows.
    assert np.array_equal(np.concatenate([seg.read_rows(s, 77) for s in range(0, ROWS, 77)]), VECTORS[order])
    assert np.array_equal(built.version.ids, IDS[order])
    assert np.array_equal(built.version.vectors(), VECTORS[order])


def test_rows_of_finds_the_rows_of_present_ids_only(built: Built) -> None:
    seg = built.version.views[0].segment
    wanted = np.array([seg.ids[5], seg.ids[0], 0, seg.ids[-1], 60_000, seg.ids[5] + 0, -3], np.int64)
    missing = np.setdiff1d(np.arange(seg.ids[0], seg.ids[-1]), seg.ids)[:3]
    rows = seg.rows_of(np.concatenate([wanted, missing]))
    assert rows.tolist() == [5, 0, ROWS - 1, 5] and rows.dtype == np.int64
    assert seg.rows_of(np.empty(0, np.int64)).size == 0


# -- search ---------------------------------------------------------------------------


def test_search_is_the_brute_force_top_k(built: Built) -> None:
    assert_brute_force(built.search(), QUERIES)
    # A stored vector finds itself first, at score 1.
    scores, ids = built.search(VECTORS[[3]], k=1)
    assert ids[0, 0] == IDS[3] and scores[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_search_at_the_segments_own_settings_keeps_its_recorded_recall(built: Built) -> None:
    _, ids = built.search(exhaustive=False)
    _, want = brute_force(QUERIES)
    floor = 1.0 if built.kind.exact else min(built.meta.recall or 1.0, built.kind.opts.min_recall)
    assert recall(ids, want) >= floor


@pytest.mark.parametrize("k", [1, ROWS, ROWS + 50])
def test_k_from_one_to_more_than_the_rows(built: Built, k: int) -> None:
    scores, ids = built.search(QUERIES[:4], k=k)
    assert ids.shape == (4, min(k, ROWS)) and not (ids < 0).any()
    assert_brute_force((scores, ids), QUERIES[:4], k=k)


@pytest.mark.parametrize("plan", ["plain", "scored", "graph"])
def test_ties_go_to_the_lower_id(kind: Kind, tmp_path: Path, plan: str) -> None:
    # Five documents share one vector (the same text): a query for it gets the three with
    # the lowest ids, with or without an allow list (that holds them all).
    vectors = VECTORS.copy()
    twins = [10, 200, 3, 450, 77]
    vectors[twins] = VECTORS[10]
    store, meta = build(kind, tmp_path / "index", vectors=vectors)
    version = store.commit(manifest(kind, meta, generation=1))
    allow = None if plan == "plain" else np.sort(IDS[twins + list(range(500, 560))])
    _, ids = version.search(VECTORS[[10]], 3, allow=allow, exact_max=0 if plan == "graph" else 8192, **kind.exhaustive)
    assert ids[0].tolist() == sorted(IDS[twins].tolist())[:3]


def test_search_merges_segments_of_the_kind(kind: Kind, tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    odd, even = np.arange(ROWS) % 2 == 1, np.arange(ROWS) % 2 == 0
    metas = [store.write_segment(IDS[m], VECTORS[m], opts=kind.opts, origin="sync", generation=g, kind=kind.name)
             for g, m in ((1, odd), (2, even))]
    version = store.commit(manifest(kind, *metas, generation=2))
    assert version.count == ROWS and sorted(version.ids.tolist()) == sorted(IDS.tolist())
    assert_brute_force(version.search(QUERIES, K, **kind.exhaustive), QUERIES)


# -- taking rows out --------------------------------------------------------------------


def test_tombstoned_rows_are_never_found(built: Built) -> None:
    _, top = brute_force(QUERIES, k=2)
    dead_ids = np.unique(np.concatenate([top.ravel(), IDS[:50]]))  # every query's best two, and more
    seg = built.version.views[0].segment
    dead = np.zeros(ROWS, bool)
    dead[seg.rows_of(dead_ids)] = True
    meta = built.store.with_dead(built.meta, dead, generation=2)
    assert (meta.dead, meta.live) == (len(dead_ids), ROWS - len(dead_ids)) and meta.tombstones is not None
    version = built.publish(meta, generation=2)
    live = np.setdiff1d(IDS, dead_ids)
    assert version.count == len(live) and np.array_equal(version.ids, live)
    assert np.array_equal(version.vectors(), np.stack([BY_ID[i] for i in live.tolist()]))
    scores, ids = built.search()
    assert not np.isin(ids, dead_ids).any()
    assert_brute_force((scores, ids), QUERIES, keep=live)
    # The same tombstones give the same segment: nothing new is written.
    assert built.store.with_dead(meta, dead, generation=3) is meta


def test_exclude_removes_ids(built: Built) -> None:
    _, top = brute_force(QUERIES, k=3)
    exclude = np.concatenate([top[:, 0], [0, 99_999]])  # with ids the segment does not hold
    scores, ids = built.search(exclude=exclude)
    assert not np.isin(ids, exclude).any()
    assert_brute_force((scores, ids), QUERIES, keep=np.setdiff1d(IDS, exclude))


@pytest.mark.parametrize("plan", ["scored", "graph"])
@pytest.mark.parametrize("allowed", [1, 7, 60, 450])
def test_an_allow_list_restricts_the_results(built: Built, plan: str, allowed: int) -> None:
    # "graph" sends every allowed row through the index with a selector (exact_max=0);
    # "scored" lets an approximate kind score a small allow list exactly.
    allow = np.sort(np.concatenate([np.random.default_rng(allowed).choice(IDS, allowed, replace=False), [0, 77_777]]))
    exact_max = 0 if plan == "graph" else 8192
    scores, ids = built.search(allow=allow, exact_max=exact_max)
    assert np.isin(ids, allow).all()
    assert_brute_force((scores, ids), QUERIES, keep=allow, k=K)


def test_allow_exclude_and_tombstones_together(built: Built) -> None:
    allow = np.sort(IDS[::3])
    exclude, dead_ids = IDS[0:30:3], IDS[3:60:3]  # each of them allowed
    seg = built.version.views[0].segment
    dead = np.zeros(ROWS, bool)
    dead[seg.rows_of(dead_ids)] = True
    built.publish(built.store.with_dead(built.meta, dead, generation=2), generation=2)
    scores, ids = built.search(allow=allow, exclude=exclude, exact_max=0)
    keep = np.setdiff1d(allow, np.concatenate([exclude, dead_ids]))
    assert_brute_force((scores, ids), QUERIES, keep=keep)


def test_an_allow_list_outside_the_segment_finds_nothing(built: Built) -> None:
    scores, ids = built.search(allow=np.array([0, 50_001, 77_777], np.int64))
    assert ids.shape == (len(QUERIES), 0) and scores.shape == (len(QUERIES), 0)


# -- files ------------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_the_checksum_passes_and_catches_a_flipped_byte(kind: Kind, tmp_path: Path) -> None:
    store, meta = build(kind, tmp_path / "index")  # written, never opened: nothing maps it
    store.check_segment_file(meta)
    path = tmp_path / "index" / meta.faiss.path
    flip(path, path.stat().st_size // 2)
    with pytest.raises(IndexCorruptError, match="does not match its checksum"):
        store.check_segment_file(meta)


@pytest.mark.parametrize("damage", ["header", "cut", "ids"])
def test_opening_a_damaged_segment_is_refused(kind: Kind, tmp_path: Path, damage: str) -> None:
    store, meta = build(kind, tmp_path / "index")
    faiss_file, ids_file = tmp_path / "index" / meta.faiss.path, tmp_path / "index" / meta.ids.path
    if damage == "header":
        flip(faiss_file, 1)
    elif damage == "cut":
        faiss_file.write_bytes(faiss_file.read_bytes()[:-100])
    else:
        flip(ids_file, 8)
    with pytest.raises(IndexCorruptError):
        IndexStore(tmp_path / "index").open_segment(meta)


def test_a_fresh_store_reopening_the_folder_answers_the_same(built: Built) -> None:
    seg = built.version.views[0].segment
    dead = np.zeros(ROWS, bool)
    dead[seg.rows_of(IDS[:40])] = True
    built.publish(built.store.with_dead(built.meta, dead, generation=2), generation=2)
    allow = np.sort(IDS[::5])
    before = [built.search(), built.search(exhaustive=False), built.search(allow=allow, exact_max=0)]
    again = IndexStore(built.root).load()
    assert again is not None and again.manifest == built.version.manifest
    after = [again.search(QUERIES, K, **built.kind.exhaustive), again.search(QUERIES, K),
             again.search(QUERIES, K, allow=allow, exact_max=0, **built.kind.exhaustive)]
    for (s1, i1), (s2, i2) in zip(before, after):
        assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    assert np.array_equal(again.views[0].dead, built.version.views[0].dead)
