"""Compressed segments through the product: a store large enough (here: thresholds set
low) builds them by merges, searches them with exact scores, records which queries set
their parameters, keeps every merge within its memory budget's row cap, and a damaged
vector file is caught."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.errors import IndexCorruptError
from retrieval.index.build import BuildOptions
from retrieval.index.compressed import ArraySource, VectorFile, max_rows, sample_rows
from retrieval.index.manifest import SegmentMeta
from retrieval.index.policy import MergePolicy
from retrieval.index.store import IndexStore
from retrieval.sync.merge import MergedRows
from tests.index.test_segments import _docs

SMALL = {"hnsw_min_docs": 100, "compressed_min_docs": 400, "merge_segments_per_tier": 3, "merge_floor_docs": 100,
         "merge_inline_max_docs": 0}


def _manifest(r) -> dict:
    index = Path(r.settings.store.index_dir)
    return json.loads((index / "manifests" / (index / "CURRENT").read_text().strip()).read_bytes())


@pytest.mark.parametrize("kind", ["hnsw_sq", "ivf"])
def test_a_merge_builds_a_compressed_segment_that_searches_with_exact_scores(make_retriever, kind: str) -> None:
    r = make_retriever(**SMALL, **({"index_type": "ivf"} if kind == "ivf" else {}))
    for start in range(0, 600, 200):
        r.ingest(_docs(200, start), wait=True)
    done = r.merge()
    assert done and done[-1].kind == kind
    (seg,) = r.status()["segments"]
    assert seg["type"] == kind and seg["passages"] == 600
    meta = _manifest(r)["segments"][0]
    assert meta["vectors"]["bytes"] == 600 * 384 * 4 and meta["rescore"]
    assert (meta["ef_search"] if kind == "hnsw_sq" else meta["nprobe"])
    # Every score is the exact inner product of the stored vectors.
    hits = r.search("item 7 red", k=10)
    q = r.encoder.encode_queries(["item 7 red"])[0]
    stored = r.document_vectors([h.id for h in hits])
    for h in hits:
        assert h.score == pytest.approx(float(stored[h.id] @ q), abs=1e-5)
    # Updated and deleted documents are hidden, by tombstones on the compressed segment.
    r.ingest([{"id": "d5", "text": "completely different zebra words"}], wait=True)
    r.delete(["d9"], wait=True)
    found = {h.id for h in r.search("item 9 red", k=50)}
    assert "d9" not in found
    top = r.search("completely different zebra words", k=1)
    assert top[0].id == "d5" and top[0].text == "completely different zebra words"
    assert r.verify().ok


def test_the_guard_records_which_queries_set_the_parameters(make_retriever) -> None:
    """No real queries: a merge calibrates on documents of the other segments (held out);
    once the store has recorded searches, on those; the manifest says which."""
    r = make_retriever(**SMALL)
    r.ingest(_docs(60, 5000, tag="other "), wait=True)  # a segment the merge below leaves alone
    for start in range(0, 900, 300):
        r.ingest(_docs(300, start), wait=True)
    (done,) = r.merge()
    assert done.kind == "hnsw_sq" and done.calibration == "held-out:60"
    for i in range(60):
        r.search(f"item {i} blue lamp", k=3)
    for start in range(900, 1800, 300):
        r.ingest(_docs(300, start), wait=True)
    (done,) = r.merge()
    assert done.kind == "hnsw_sq" and done.calibration == "queries:60"
    labels = sorted(s["calibration"] or "" for s in _manifest(r)["segments"])
    assert labels == ["", "held-out:60", "queries:60"]


def test_a_full_build_writes_segments_within_the_memory_budget(make_retriever) -> None:
    r = make_retriever(index_type="flat", merge_memory_mb=128)
    r.ingest(_docs(300))
    cap = BuildOptions(merge_memory_mb=128).max_rows("flat", 384)
    report = r.reindex()
    assert report.added == 300
    assert all(s["passages"] <= max(cap, 300) for s in r.status()["segments"])
    assert len(r.search("item 3", k=300)) == 300


def test_merged_rows_come_in_id_order_with_their_vectors(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    rng = np.random.default_rng(3)
    opts = BuildOptions(index_type="flat")
    metas, expect = [], {}
    for g, ids in enumerate([np.arange(0, 300, 3), np.arange(1, 300, 3), np.arange(2, 900, 3)]):
        x = rng.standard_normal((len(ids), 8)).astype(np.float32)
        metas.append(store.write_segment(ids, x, opts=opts, origin="sync", generation=g + 1))
        expect.update(zip(ids.tolist(), x))
    views = [store.open_generation(_one(m)).views[0] for m in metas]
    dead = views[0].dead.copy()
    dead[[0, 5]] = True  # rows 0 and 5 of the first segment are dead
    views[0].dead = dead
    rows = MergedRows(views, 8)
    got = np.concatenate(list(rows.blocks(37)))
    gone = set(views[0].segment.ids[[0, 5]].tolist())
    want_ids = sorted(i for i in expect if i not in gone)
    assert rows.ids.tolist() == want_ids
    np.testing.assert_array_equal(got, np.stack([expect[i] for i in want_ids]))


def _one(meta: SegmentMeta):
    from retrieval.index.manifest import Manifest

    return Manifest(generation=1, model_key="t", dim=8, index_type="flat", last_seq=0, segments=(meta,), created_at=0)


def test_no_merge_is_planned_above_the_memory_cap() -> None:
    opts = BuildOptions(merge_memory_mb=256)
    policy = MergePolicy(segments_per_tier=3, max_merge_at_once=10, floor_docs=1000)
    cap = policy.max_rows(opts, 384)
    assert cap == min(opts.max_rows("hnsw_sq", 384), cap)

    def seg(name: str, live: int) -> SegmentMeta:
        from retrieval.index.files import FileRef

        ref = FileRef("x", 0, "")
        return SegmentMeta(name=name, kind="hnsw_sq", rows=live, dead=0, faiss=ref, ids=ref, tombstones=None,
                           origin="merge")

    # Three segments just over half the cap: each fits, two together do not; none merges.
    big = [seg(f"b{i}", cap // 2 + 1) for i in range(3)]
    assert [m for m in policy.plan(big, opts) if m.reason == "tier"] == []
    # A tier of small ones merges, and no merge exceeds the cap.
    small = [seg(f"s{i}", cap // 5) for i in range(12)]
    plans = policy.plan(small, opts)
    assert plans and all(m.live <= cap for m in plans)
    # Towards the fewest segments: the cap still holds, and segments that cannot pair stay.
    assert policy.plan_fewest(big, opts) == []
    fewest = policy.plan_fewest(small + big[:1], opts)
    assert all(m.live <= cap for m in fewest) and len({n for m in fewest for n in m.names}) == sum(
        len(m.names) for m in fewest)
    assert sum(m.live for m in fewest) == 12 * (cap // 5) + (cap // 2 + 1)


def test_the_cap_follows_the_budget_and_the_row_cost() -> None:
    mb = 1 << 20
    assert max_rows("hnsw_sq", 384, 1024 * mb) > max_rows("hnsw", 384, 1024 * mb) > max_rows("flat", 384, 512 * mb)
    assert max_rows("ivf", 384, 2048 * mb) > 2 * max_rows("ivf", 384, 1024 * mb) * 0.9


def test_a_damaged_vector_file_is_caught(tmp_path: Path) -> None:
    store = IndexStore(tmp_path)
    x = np.random.default_rng(0).standard_normal((500, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    meta = store.write_segment(np.arange(500), x, opts=BuildOptions(index_type="hnsw_sq"), origin="build",
                               generation=1)
    np.testing.assert_array_equal(VectorFile(tmp_path / meta.vectors.path, 500, 16).read(0, 500), x)
    path = tmp_path / meta.vectors.path
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexCorruptError, match="checksum"):
        store.check_segment_file(meta)
    path.write_bytes(bytes(data[:-64]))
    with pytest.raises(IndexCorruptError, match="truncated"):
        IndexStore(tmp_path).open_segment(meta)


def test_sampling_reads_rows_spread_through_the_source() -> None:
    x = np.arange(10_000 * 2, dtype=np.float32).reshape(10_000, 2)
    got = sample_rows(ArraySource(x), 100, seed=1)
    assert len(got) == 100 and len({tuple(r) for r in got}) == 100
    assert got[:, 0].min() < 2000 and got[:, 0].max() > 18_000


def test_compact_fewest_merges_a_bulk_load_into_one_segment(store_env, tmp_path: Path, monkeypatch) -> None:
    """`retrieve compact --fewest` merges what the tiers leave (here: nine segments the
    policy would keep) into the fewest segments the memory cap allows: one."""
    import json as _json

    from click.testing import CliRunner

    from retrieval.cli import cli
    from tests.fixtures.stores import write_jsonl

    for name, value in {"MERGE_SEGMENTS_PER_TIER": "50", "MERGE_INLINE_MAX_DOCS": "0", "HNSW_MIN_DOCS": "100",
                        "COMPRESSED_MIN_DOCS": "400"}.items():
        monkeypatch.setenv(f"RETRIEVE_{name}", value)
    runner = CliRunner()
    for start in range(0, 900, 100):
        path = write_jsonl(tmp_path / f"b{start}.jsonl", _docs(100, start))
        assert runner.invoke(cli, ["ingest", str(path)]).exit_code == 0
    before = _json.loads(runner.invoke(cli, ["status", "--json"]).output)["segments"]
    assert len(before) == 9
    result = runner.invoke(cli, ["compact", "--fewest", "--json"])
    assert result.exit_code == 0, result.output
    merges = _json.loads(result.output)["merges"]
    assert merges and merges[-1]["kind"] == "hnsw_sq"
    (after,) = _json.loads(runner.invoke(cli, ["status", "--json"]).output)["segments"]
    assert after["type"] == "hnsw_sq" and after["passages"] == 900
    hits = _json.loads(runner.invoke(cli, ["search", "item 42 red", "-k", "3", "--json"]).output)["results"]
    assert len(hits) == 3


def test_vector_reads_return_the_rows_asked_for_in_their_order(tmp_path: Path) -> None:
    """Candidates are read with pread, in runs where rows are near each other: any order,
    repeats and gaps come back as asked."""
    from retrieval.index import compressed

    x = np.random.default_rng(5).standard_normal((3000, 16)).astype(np.float32)
    path = tmp_path / "v.vec"
    compressed.write_vectors(ArraySource(x), path)
    vf = VectorFile(path, 3000, 16)
    for rows in (np.random.default_rng(6).integers(0, 3000, 250), np.array([2999, 0, 5, 5, 21, 4]), np.arange(40)):
        np.testing.assert_array_equal(vf.take(rows), x[rows])
    assert vf.take(np.empty(0, np.int64)).shape == (0, 16)


def test_a_sync_large_enough_to_be_compressed_calibrates_on_real_queries(make_retriever) -> None:
    r = make_retriever(**SMALL)
    r.ingest(_docs(50), wait=True)
    for i in range(60):
        r.search(f"item {i} red shoe", k=3)
    r.ingest(_docs(500, 1000), wait=True)  # one sync, one segment of 500 rows
    kinds = {s["kind"]: s["calibration"] for s in _manifest(r)["segments"]}
    assert kinds.get("hnsw_sq") == "queries:60", kinds


def test_a_compressed_segment_that_misses_the_target_is_kept_exact(tmp_path: Path) -> None:
    """As an HNSW segment: isotropic vectors and a narrow search cannot reach the target,
    so the segment is built exact from its vector file, and marked so; no vector file is
    left behind."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    store = IndexStore(tmp_path)
    opts = BuildOptions(index_type="hnsw_sq", max_ef_search=16, min_recall=1.0, hnsw_m=4)
    meta = store.write_segment(np.arange(5000), x, opts=opts, origin="build", generation=1)
    assert meta.kind == "flat" and meta.exact_by_guard and meta.calibration.startswith("midpoints:")
    assert meta.vectors is None and not list((tmp_path / "segments").glob("*.vec"))
    assert policy_wrong_type(meta, opts) is False


def policy_wrong_type(meta: SegmentMeta, opts: BuildOptions) -> bool:
    return MergePolicy.wrong_type(meta, opts)


def test_a_segment_the_guard_kept_exact_is_never_rebuilt_for_its_type() -> None:
    """Under auto, a 50,000-row segment the guard kept exact is large enough to be
    compressed; rebuilding it would keep it exact again, at every merge pass."""
    from retrieval.index.files import FileRef

    ref = FileRef("x", 0, "")
    kept = SegmentMeta(name="a", kind="flat", rows=50_000, dead=0, faiss=ref, ids=ref, tombstones=None,
                       origin="merge", exact_by_guard=True)
    plain = SegmentMeta(name="b", kind="flat", rows=50_000, dead=0, faiss=ref, ids=ref, tombstones=None,
                        origin="merge")
    for index_type in ("auto", "hnsw", "hnsw_sq", "ivf"):
        assert MergePolicy().plan([kept], BuildOptions(index_type=index_type)) == []
        assert [m.reason for m in MergePolicy().plan([plain], BuildOptions(index_type=index_type))] == ["type"]
