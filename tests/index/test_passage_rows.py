"""Rows are passages: a row id packs (document, ordinal), a document's rows are one id
range, and a search can rank documents by their best passage (retrieval.index.rows and
IndexVersion.search_documents), for every segment kind of the contract suite."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.index.rows import PASSAGE_BITS, docs_of, ordinals_of, row_ids, rows_of_documents
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore
from tests.index.test_segment_contract import KINDS, Kind, manifest, unit

DIM = 32
RNG = np.random.default_rng(7)
# 120 documents with 1 to 12 passages each (ids with gaps), one vector per passage.
DOCS = np.sort(RNG.choice(np.arange(1, 5000), size=120, replace=False)).astype(np.int64)
COUNTS = RNG.integers(1, 13, size=len(DOCS))
PASSAGE_DOC = np.repeat(DOCS, COUNTS)
PASSAGE_ORD = np.concatenate([np.arange(c) for c in COUNTS])
ROWS = row_ids(PASSAGE_DOC, PASSAGE_ORD, PASSAGE_BITS)
VECTORS = unit(RNG.standard_normal((len(ROWS), DIM)))
QUERIES = unit(RNG.standard_normal((16, DIM)))


def test_a_row_id_names_its_document_and_ordinal() -> None:
    assert (docs_of(ROWS, PASSAGE_BITS) == PASSAGE_DOC).all()
    assert (ordinals_of(ROWS, PASSAGE_BITS) == PASSAGE_ORD).all()
    assert (np.diff(ROWS) > 0).all(), "documents in id order give rows in id order"
    assert docs_of(np.array([-1]), PASSAGE_BITS).tolist() == [-1]
    # Without passage bits a row is its document.
    assert row_ids(DOCS, np.zeros(len(DOCS), np.int64), 0).tolist() == DOCS.tolist()
    with pytest.raises(ValueError):
        row_ids(DOCS[:1], np.array([1]), 0)
    with pytest.raises(ValueError):
        row_ids(DOCS[:1], np.array([1 << PASSAGE_BITS]), PASSAGE_BITS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(0, 40)), max_size=200, unique=True),
       st.lists(st.integers(0, 320), max_size=40), st.sampled_from([0, 4, PASSAGE_BITS]))
def test_rows_of_documents_is_every_row_of_exactly_those_documents(pairs: list[tuple[int, int]], wanted: list[int],
                                                                   bits: int) -> None:
    if bits == 0:
        pairs = list({d: (d, 0) for d, _ in pairs}.values())
    pairs = [(d, o % max(1, 1 << bits)) for d, o in pairs]
    ids = np.unique(row_ids(np.array([d for d, _ in pairs], np.int64), np.array([o for _, o in pairs], np.int64), bits))
    got = rows_of_documents(ids, np.array(wanted, np.int64), bits)
    expected = np.flatnonzero(np.isin(docs_of(ids, bits), wanted))
    assert got.tolist() == expected.tolist()


def best_documents(queries: np.ndarray, k: int, keep: np.ndarray | None = None) -> list[list[tuple[int, int]]]:
    """Brute force: per query, the top-k (document, best row) by best passage score."""
    scores = queries @ VECTORS.T
    out = []
    for s in scores:
        best: dict[int, tuple[float, int]] = {}
        for score, row, doc in zip(s.tolist(), ROWS.tolist(), PASSAGE_DOC.tolist()):
            if keep is not None and doc not in keep:
                continue
            if doc not in best or (-score, row) < (-best[doc][0], best[doc][1]):
                best[doc] = (score, row)
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[1][1]))[:k]
        out.append([(doc, row) for doc, (_, row) in ranked])
    return out


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def version(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Kind, IndexVersion]:
    kind: Kind = request.param
    store = IndexStore(tmp_path / "index")
    meta = store.write_segment(ROWS, VECTORS, opts=kind.opts, origin="build", generation=1, kind=kind.name)
    return kind, store.commit(replace(manifest(kind, meta, generation=1), passage_bits=PASSAGE_BITS))


@pytest.mark.parametrize("k", [1, 5, 30, 200])
def test_documents_are_ranked_by_their_best_passage(version: tuple[Kind, IndexVersion], k: int) -> None:
    kind, v = version
    scores, docs, rows = v.search_documents(QUERIES, k, **kind.exhaustive)
    expected = best_documents(QUERIES, k)
    for qi in range(len(QUERIES)):
        got = [(int(d), int(r)) for d, r in zip(docs[qi], rows[qi]) if d >= 0]
        assert len(got) == min(k, len(DOCS)) and len({d for d, _ in got}) == len(got), "distinct documents"
        assert got == expected[qi]
        live = scores[qi][docs[qi] >= 0]
        assert np.allclose(live, [float(QUERIES[qi] @ VECTORS[np.searchsorted(ROWS, r)]) for _, r in got], atol=1e-5)


def test_one_documents_many_passages_do_not_crowd_out_the_others(tmp_path: Path) -> None:
    # Document 1's 40 passages are all close to the query; k=5 still gets 5 documents.
    near = unit(np.tile(QUERIES[:1], (40, 1)) + 0.01 * RNG.standard_normal((40, DIM)))
    rows = np.concatenate([row_ids(np.ones(40, np.int64), np.arange(40), PASSAGE_BITS), ROWS + (10_000 << PASSAGE_BITS)])
    vectors = np.concatenate([near, VECTORS])
    store = IndexStore(tmp_path / "index")
    kind = KINDS[0]
    meta = store.write_segment(rows, vectors, opts=kind.opts, origin="build", generation=1, kind=kind.name)
    v = store.commit(replace(manifest(kind, meta, generation=1), passage_bits=PASSAGE_BITS))
    _, docs, _ = v.search_documents(QUERIES[:1], 5)
    assert docs[0][0] == 1 and len(set(docs[0].tolist())) == 5 and (docs[0] >= 0).all()


def test_exclude_and_allow_take_every_passage_of_a_document(version: tuple[Kind, IndexVersion]) -> None:
    kind, v = version
    top = best_documents(QUERIES[:4], 3)
    gone = np.unique([d for row in top for d, _ in row])
    _, docs, _ = v.search_documents(QUERIES[:4], 10, exclude=gone, **kind.exhaustive)
    assert not np.isin(docs, gone).any()
    # Not one of their rows is left either, whatever its rank.
    _, rows = v.search(QUERIES[:4], len(ROWS), exclude=gone, **kind.exhaustive)
    assert not np.isin(docs_of(rows[rows >= 0], PASSAGE_BITS), gone).any()
    allow = np.sort(RNG.choice(DOCS, size=15, replace=False))
    _, docs, _ = v.search_documents(QUERIES[:4], 10, allow=allow, **kind.exhaustive)
    assert [[int(d) for d in row if d >= 0] for row in docs] == \
        [[d for d, _ in row] for row in best_documents(QUERIES[:4], 10, keep=set(allow.tolist()))]


def test_an_index_without_passage_bits_is_searched_as_before(tmp_path: Path) -> None:
    store = IndexStore(tmp_path / "index")
    kind = KINDS[0]
    meta = store.write_segment(DOCS, VECTORS[: len(DOCS)], opts=kind.opts, origin="build", generation=1, kind=kind.name)
    v = store.commit(manifest(kind, meta, generation=1))
    assert v.bits == 0
    scores, rows = v.search(QUERIES, 7, exclude=DOCS[:3])
    s2, docs, rows2 = v.search_documents(QUERIES, 7, exclude=DOCS[:3])
    assert (rows == docs).all() and (rows == rows2).all() and np.array_equal(scores, s2)
    assert not np.isin(rows, DOCS[:3]).any()
