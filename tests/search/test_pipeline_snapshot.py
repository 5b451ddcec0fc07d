"""The pipeline stages that read one database snapshot (``retrieval.search.pipeline``):
``backlog``, what changed after an index version was published, and ``fetch_hits``, the
winners' rows. On a tiny real store, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.search.pipeline import backlog, fetch_hits

DOCS = [
    {"id": "a", "text": "red shoes", "metadata": {"n": 1}},
    {"id": "b", "text": "blue hat", "metadata": {"n": 2}},
    {"id": "c", "text": "green bag"},
]


def internal_ids(r: Any) -> dict[str, int]:
    with r.store.read() as snap:
        return {d.external_id: d.id for d in snap.documents(snap.all_ids().tolist()).values()}


@pytest.mark.both_databases
def test_backlog_holds_what_changed_after_the_index_version(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    version = r.current_index()
    with r.store.read() as snap:
        current = backlog(snap, version)
    assert current.ids.size == 0 and current.documents == {}

    before = internal_ids(r)
    r.ingest([{"id": "a", "text": "red running shoes"}, {"id": "d", "text": "yellow scarf"}], sync=False)
    r.delete(["b"], sync=False)
    after = internal_ids(r)
    with r.store.read() as snap:
        pending = backlog(snap, version)
        # As of the version's own position nothing is pending.
        assert backlog(snap, version, max_seq=version.manifest.last_seq).ids.size == 0
    # Every changed id, the deleted one too; the documents only of those that still exist,
    # as they are now.
    assert pending.ids.dtype.kind == "i"
    assert sorted(pending.ids.tolist()) == sorted([before["a"], before["b"], after["d"]])
    assert set(pending.documents) == {before["a"], after["d"]}
    assert pending.documents[before["a"]].text == "red running shoes"
    assert "b" not in after

    r.sync()
    with r.store.read() as snap:
        assert backlog(snap, r.current_index()).ids.size == 0


@pytest.mark.both_databases
def test_fetch_hits_reads_the_winners_rows_in_rank_order(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    ids = internal_ids(r)
    ranked = [[(0.75, ids["c"]), (0.5, ids["a"])], [], [(0.25, ids["b"])]]
    with r.store.read() as snap:
        hits = fetch_hits(snap, ranked)
    assert [[(h.id, h.score, h.doc_id) for h in row] for row in hits] == [
        [("c", 0.75, ids["c"]), ("a", 0.5, ids["a"])], [], [("b", 0.25, ids["b"])]]
    a = hits[0][1]
    assert a.text == "red shoes" and a.metadata == {"n": 1} and a.mode == "dense"
    assert hits[0][0].metadata == {}


@pytest.mark.both_databases
def test_fetch_hits_adds_fields_per_query_and_skips_a_missing_row(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest(DOCS)
    ids = internal_ids(r)
    gone = max(ids.values()) + 1000
    ranked = [[(0.5, ids["a"]), (0.4, gone), (0.3, ids["b"])]]
    extra = [{ids["a"]: {"dense_rank": 1, "keyword_rank": None}, ids["b"]: {"snippet": "blue [hat]"}}]
    with r.store.read() as snap:
        [row] = fetch_hits(snap, ranked, extra=extra, mode="hybrid")
    assert [h.id for h in row] == ["a", "b"]
    assert (row[0].dense_rank, row[0].keyword_rank, row[0].snippet) == (1, None, None)
    assert row[1].snippet == "blue [hat]" and row[1].dense_rank is None
    assert {h.mode for h in row} == {"hybrid"}


def test_rows_of_an_index_from_before_passages_name_each_documents_first_passage(tmp_path: Path) -> None:
    """An index written before passages (passage_bits 0: a row id is its document id) is
    searched until its next sync rebuilds it; its rows must read as passage 0 of their
    document, not as passage ``id & 0xFFFFF`` (a wrong passage would be looked up)."""
    from retrieval.index.rows import PASSAGE_BITS, docs_of, ordinals_of
    from retrieval.search.pipeline import dense_candidates
    from tests.index.test_segment_contract import KINDS, QUERIES, build, manifest

    kind = KINDS[0]
    store, meta = build(kind, tmp_path / "index")
    version = store.commit(manifest(kind, meta, generation=1))
    assert version.bits == 0
    found = dense_candidates(version, QUERIES, 5, exclude=np.empty(0, np.int64))
    assert found.rows is not None and (found.ids >= 0).all()
    assert (docs_of(found.rows, PASSAGE_BITS) == found.ids).all()
    assert (ordinals_of(found.rows, PASSAGE_BITS) == 0).all()
