"""Search: the query pipeline (:mod:`retrieval.search.pipeline`) and its results."""

from retrieval.search.hits import Hit
from retrieval.search.pipeline import Candidates, search

__all__ = ["Candidates", "Hit", "search"]
