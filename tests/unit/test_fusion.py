"""Hybrid fusion (``retrieval.search.pipeline._fuse``): reciprocal rank fusion, and the
convex combination of min-max normalised scores that ``alpha`` selects.

Every expected score is worked out by hand here from the definitions in docs/search.md:
RRF gives a document sum(1 / (60 + rank)) over the lists it is in; ``alpha`` gives it
alpha x its normalised dense score + (1 - alpha) x its normalised keyword score, where a
list's scores are mapped onto [0, 1] by (s - min) / (max - min) (1.0 when they are all
equal) and a document missing from a list gets 0 from it. Ranks are 1-based, None where
a document is not in a list; ties go to the lower internal id.
"""

from __future__ import annotations

from typing import Any

import pytest

from retrieval.search.pipeline import RRF_K, _fuse
from retrieval.store.terms import KeywordHit


def kw(*pairs: tuple[float, int]) -> list[tuple[float, int, KeywordHit]]:
    """A keyword ranking as the pipeline hands it over: (score, id, hit), best first."""
    return [(score, i, KeywordHit(i, score, "", ())) for score, i in pairs]


def ids(ranked: list[tuple[float, int]]) -> list[int]:
    return [i for _, i in ranked]


def approx(ranked: list[tuple[float, int]]) -> list[tuple[Any, int]]:
    """``ranked`` with its scores compared to 1e-12 (ids exactly)."""
    return [(pytest.approx(score, rel=1e-12, abs=1e-12), i) for score, i in ranked]


# -- reciprocal rank fusion ---------------------------------------------------------------

DENSE = [(0.9, 10), (0.8, 20), (0.7, 30)]
KEYWORD = kw((5.0, 30), (4.0, 40))


def test_rrf_constant_is_sixty() -> None:
    assert RRF_K == 60


def test_rrf_scores_are_the_sum_of_reciprocal_ranks_over_both_lists() -> None:
    ranked, extra = _fuse(DENSE, KEYWORD, 10, None)
    # 30 is third in dense and first in keyword; 10 and 20 are only in dense, 40 only in keyword.
    assert ranked == approx([(1 / 63 + 1 / 61, 30), (1 / 61, 10), (1 / 62, 20), (1 / 62, 40)])
    assert extra == {
        30: {"dense_rank": 3, "keyword_rank": 1},
        10: {"dense_rank": 1, "keyword_rank": None},
        20: {"dense_rank": 2, "keyword_rank": None},
        40: {"dense_rank": None, "keyword_rank": 2},
    }


def test_rrf_ties_go_to_the_lower_id() -> None:
    # 20 (second in dense) and 40 (second in keyword) both score 1/62 above; here the
    # larger id comes first in its list, and still loses the tie.
    ranked, _ = _fuse([(0.9, 7)], kw((3.0, 3)), 10, None)
    assert ranked == approx([(1 / 61, 3), (1 / 61, 7)])
    ranked, _ = _fuse([(0.9, 3)], kw((3.0, 7)), 10, None)
    assert ids(ranked) == [3, 7]


def test_rrf_reads_ranks_only_never_the_scores() -> None:
    scaled = [(s * 1000 - 500, i) for s, i in DENSE]
    other = kw((0.001, 30), (-7.0, 40))
    assert _fuse(scaled, other, 10, None) == _fuse(DENSE, KEYWORD, 10, None)


def test_rrf_cuts_at_k_and_describes_only_what_it_returns() -> None:
    ranked, extra = _fuse(DENSE, KEYWORD, 2, None)
    assert ranked == approx([(1 / 63 + 1 / 61, 30), (1 / 61, 10)])
    assert set(extra) == {30, 10}


def test_rrf_with_one_list_empty_keeps_the_other_lists_order() -> None:
    ranked, extra = _fuse(DENSE, [], 10, None)
    assert ranked == approx([(1 / 61, 10), (1 / 62, 20), (1 / 63, 30)])
    assert all(e["keyword_rank"] is None for e in extra.values())
    ranked, extra = _fuse([], KEYWORD, 10, None)
    assert ranked == approx([(1 / 61, 30), (1 / 62, 40)])
    assert extra == {30: {"dense_rank": None, "keyword_rank": 1}, 40: {"dense_rank": None, "keyword_rank": 2}}
    assert _fuse([], [], 10, None) == ([], {})


# -- alpha: a convex combination of min-max normalised scores --------------------------

# The same three documents, in opposite orders.
SAME_DENSE = [(0.9, 5), (0.5, 1), (0.1, 9)]
SAME_KEYWORD = kw((10.0, 9), (8.0, 1), (1.0, 5))


def test_alpha_one_reproduces_the_dense_order() -> None:
    ranked, extra = _fuse(SAME_DENSE, SAME_KEYWORD, 10, 1.0)
    # Normalised dense: 5 -> 1, 1 -> (0.5 - 0.1) / 0.8 = 0.5, 9 -> 0.
    assert ranked == approx([(1.0, 5), (0.5, 1), (0.0, 9)])
    assert extra[5] == {"dense_rank": 1, "keyword_rank": 3}


def test_alpha_zero_reproduces_the_keyword_order() -> None:
    ranked, _ = _fuse(SAME_DENSE, SAME_KEYWORD, 10, 0.0)
    # Normalised keyword: 9 -> 1, 1 -> (8 - 1) / 9 = 7/9, 5 -> 0.
    assert ranked == approx([(1.0, 9), (7 / 9, 1), (0.0, 5)])


def test_alpha_weighs_the_two_normalised_scores() -> None:
    ranked, _ = _fuse(SAME_DENSE, SAME_KEYWORD, 10, 0.25)
    # 5: 0.25 x 1 + 0.75 x 0; 1: 0.25 x 0.5 + 0.75 x 7/9; 9: 0.25 x 0 + 0.75 x 1.
    assert ranked == approx([(0.75, 9), (0.125 + 0.75 * 7 / 9, 1), (0.25, 5)])


def test_alpha_a_single_element_list_normalises_to_one() -> None:
    ranked, _ = _fuse([(0.3, 4)], [], 10, 0.7)
    assert ranked == approx([(0.7, 4)])
    ranked, _ = _fuse([], kw((-2.5, 4)), 10, 0.7)
    assert ranked == approx([(0.3, 4)])
    # So do equal scores: no division by zero, every one of them counts as the best.
    ranked, _ = _fuse([(0.4, 2), (0.4, 1)], [], 10, 0.5)
    assert ranked == approx([(0.5, 1), (0.5, 2)])


def test_alpha_a_document_in_one_list_gets_nothing_from_the_other() -> None:
    ranked, extra = _fuse([(0.9, 1), (0.1, 2)], kw((3.0, 3), (1.0, 1)), 10, 0.25)
    # Dense: 1 -> 1, 2 -> 0; keyword: 3 -> 1, 1 -> 0.
    assert ranked == approx([(0.75, 3), (0.25, 1), (0.0, 2)])
    assert extra == {
        3: {"dense_rank": None, "keyword_rank": 1},
        1: {"dense_rank": 1, "keyword_rank": 2},
        2: {"dense_rank": 2, "keyword_rank": None},
    }


def test_alpha_cuts_at_k() -> None:
    ranked, extra = _fuse(SAME_DENSE, SAME_KEYWORD, 1, 0.25)
    assert ranked == approx([(0.75, 9)])
    assert set(extra) == {9}


# A list's lowest score and an absent document both normalise to 0: the tie must not let
# the other list's documents through.
@pytest.mark.parametrize("alpha", [1.0, 0.0])
def test_alpha_at_an_end_keeps_the_other_lists_documents_below_its_own(alpha: float) -> None:
    # Dense ranks 5 then 8; keyword holds only 3, whose id is below 8's.
    dense, keyword = [(0.9, 5), (0.5, 8)], kw((2.0, 3))
    if alpha == 0.0:
        dense, keyword = [(2.0, 3)], kw((0.9, 5), (0.5, 8))
    ranked, _ = _fuse(dense, keyword, 3, alpha)
    assert ids(ranked)[:2] == [5, 8]
