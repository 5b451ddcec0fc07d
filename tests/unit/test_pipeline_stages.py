"""The query pipeline's pure stages (``retrieval.search.pipeline``): ``merge``, the
candidates it merges, and ``check_mode``. The stages that read a snapshot (``backlog``,
``fetch_hits``) are tested on a real store in tests/search/test_pipeline_snapshot.py."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from retrieval.errors import ArgumentError
from retrieval.search.pipeline import MODES, Candidates, check_mode, merge


def cands(scores: list[list[float]], ids: list[list[int]]) -> Candidates:
    return Candidates(np.asarray(scores, np.float32), np.asarray(ids, np.int64))


# Two candidate lists for one query, as the index search and the exact backlog scoring
# give them: the index's padded with id -1 (FAISS pads with the lowest float).
INDEX = cands([[0.875, 0.5, -3.4e38]], [[3, 8, -1]])
BACKLOG = cands([[0.75, 0.5]], [[5, 2]])


# -- merge -----------------------------------------------------------------------------


def test_merge_takes_the_top_k_over_every_part_best_first() -> None:
    assert merge([INDEX, BACKLOG], 2, None) == [[(0.875, 3), (0.75, 5)]]
    # 2 and 8 tie at 0.5: the lower id first, whichever part it came from.
    assert merge([INDEX, BACKLOG], 4, None) == [[(0.875, 3), (0.75, 5), (0.5, 2), (0.5, 8)]]
    assert merge([BACKLOG, INDEX], 4, None) == merge([INDEX, BACKLOG], 4, None)


def test_merge_ignores_padding_whatever_its_score() -> None:
    padded = cands([[2.0, 0.25, 1.5]], [[-1, 4, -1]])
    assert merge([padded], 5, None) == [[(0.25, 4)]]
    assert merge([INDEX, BACKLOG], 10, None) == [[(0.875, 3), (0.75, 5), (0.5, 2), (0.5, 8)]]


def test_merge_cuts_at_min_score_inclusive() -> None:
    assert merge([INDEX, BACKLOG], 10, 0.6) == [[(0.875, 3), (0.75, 5)]]
    assert merge([INDEX, BACKLOG], 10, 0.5) == [[(0.875, 3), (0.75, 5), (0.5, 2), (0.5, 8)]]
    assert merge([INDEX, BACKLOG], 10, 0.9) == [[]]
    # The cut comes after k: it never brings in a hit from beyond the top k.
    assert merge([INDEX, BACKLOG], 1, 0.8) == [[(0.875, 3)]]


def test_merge_ranks_each_query_on_its_own() -> None:
    a = cands([[0.25, 0.125], [0.5, 0.0625]], [[1, 2], [1, 2]])
    b = cands([[0.375], [-0.5]], [[3], [3]])
    assert merge([a, b], 2, None) == [[(0.375, 3), (0.25, 1)], [(0.5, 1), (0.0625, 2)]]


def test_merge_gives_python_numbers() -> None:
    [[(score, i)]] = merge([INDEX], 1, None)
    assert type(score) is float and type(i) is int


def test_merge_with_k_zero_or_no_candidates() -> None:
    assert merge([INDEX, BACKLOG], 0, None) == [[]]
    assert merge([], 5, None) == []


def test_empty_candidates_have_the_queries_and_no_columns() -> None:
    empty = Candidates.empty(3)
    assert empty.scores.shape == (3, 0) and empty.scores.dtype == np.float32
    assert empty.ids.shape == (3, 0) and empty.ids.dtype == np.int64
    assert merge([empty], 5, None) == [[], [], []]
    assert merge([Candidates.empty(1), INDEX], 5, None) == merge([INDEX], 5, None)
    assert Candidates.empty(0).scores.shape == (0, 0)


# -- check_mode ------------------------------------------------------------------------


def test_every_mode_is_accepted_without_alpha() -> None:
    assert MODES == ("dense", "keyword", "hybrid")
    for mode in MODES:
        check_mode(mode)
        check_mode(mode, None)


@pytest.mark.parametrize("mode", ["semantic", "Dense", "", "hybrid "])
def test_an_unknown_mode_is_refused_naming_the_modes(mode: str) -> None:
    with pytest.raises(ArgumentError, match=r"unknown search mode .*; use one of dense, keyword, hybrid$"):
        check_mode(mode)
    with pytest.raises(ArgumentError, match="unknown search mode"):  # before alpha is looked at
        check_mode(mode, 7.0)


@pytest.mark.parametrize("alpha", [0, 0.0, 0.5, 1, 1.0])
def test_hybrid_takes_alpha_from_zero_to_one(alpha: float) -> None:
    check_mode("hybrid", alpha)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, math.nan, math.inf, -math.inf, True, False, "0.5", [0.5]])
def test_alpha_out_of_range_or_not_a_number_is_refused(alpha: Any) -> None:
    with pytest.raises(ArgumentError, match=r"^alpha must be between 0 and 1, got "):
        check_mode("hybrid", alpha)


@pytest.mark.parametrize("mode", ["dense", "keyword"])
def test_alpha_without_hybrid_mode_is_refused(mode: str) -> None:
    with pytest.raises(ArgumentError, match="^alpha weighs the two rankings of hybrid mode; use it with mode hybrid$"):
        check_mode(mode, 0.5)
