"""Index rows are passages: how a row id names its document and the passage in it.

A document longer than the model's window is indexed as several passages. Each passage's
row id packs the document's internal id and the passage's ordinal::

    row = document_id << bits | ordinal

so that a document's rows are one contiguous range of ids. Every segment keeps its ids
sorted, so the rows of a set of documents (to tombstone them, to exclude or allow them
in a search) are found with two binary searches per document, and a document's passages
always move together. The manifest records ``bits`` (``passage_bits``); an index written
before passages has ``bits`` 0, where a row id is the document id, and the same code
serves it.
"""

from __future__ import annotations

import numpy as np

# 2**20 passages per document; document ids up to 2**43 (8.8e12).
PASSAGE_BITS = 20
MAX_DOCUMENT_ID = (1 << (63 - PASSAGE_BITS)) - 1


def max_passages(bits: int) -> int:
    """How many passages one document may have under ``bits``."""
    return 1 << bits if bits else 1


def row_ids(doc_ids: np.ndarray, ordinals: np.ndarray, bits: int) -> np.ndarray:
    """The row id of each (document, ordinal) pair."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    ordinals = np.asarray(ordinals, dtype=np.int64)
    if bits == 0:
        if len(ordinals) and ordinals.any():
            raise ValueError("an index without passage bits holds one row per document (ordinal 0)")
        return doc_ids.copy()
    if len(ordinals) and (ordinals.min() < 0 or ordinals.max() >= 1 << bits):
        raise ValueError(f"a passage ordinal must be in [0, {1 << bits})")
    return (doc_ids << bits) | ordinals


def docs_of(rows: np.ndarray, bits: int) -> np.ndarray:
    """The document id of each row id (-1 padding stays -1)."""
    rows = np.asarray(rows, dtype=np.int64)
    return np.where(rows >= 0, rows >> bits, -1) if bits else rows


def ordinals_of(rows: np.ndarray, bits: int) -> np.ndarray:
    """The passage ordinal of each row id (-1 padding gives -1)."""
    rows = np.asarray(rows, dtype=np.int64)
    return np.where(rows >= 0, rows & ((1 << bits) - 1), -1) if bits else np.where(rows >= 0, 0, -1)


def rows_of_documents(sorted_ids: np.ndarray, doc_ids: np.ndarray, bits: int) -> np.ndarray:
    """Positions in ``sorted_ids`` (a segment's ascending row ids) of every row of any of
    ``doc_ids``, ascending: two binary searches per document, whatever the segment's size."""
    doc_ids = np.asarray(doc_ids, dtype=np.int64)
    if not len(doc_ids) or not len(sorted_ids):
        return np.empty(0, np.int64)
    if bits == 0:
        pos = np.searchsorted(sorted_ids, doc_ids)
        inside = pos < len(sorted_ids)
        pos, wanted = pos[inside], doc_ids[inside]
        return np.unique(pos[sorted_ids[pos] == wanted]).astype(np.int64, copy=False)
    lo = np.searchsorted(sorted_ids, doc_ids << bits, side="left")
    hi = np.searchsorted(sorted_ids, (doc_ids + 1) << bits, side="left")
    keep = hi > lo
    lo, hi = lo[keep], hi[keep]
    if not len(lo):
        return np.empty(0, np.int64)
    counts = hi - lo
    # Every position in [lo, hi) of every document, without a Python loop.
    starts = np.repeat(lo - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
    return np.unique(starts + np.arange(int(counts.sum()), dtype=np.int64))
