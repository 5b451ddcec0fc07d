"""Documents as passages: the split a store's settings ask for, and the vectors of every
passage, embedding only passage texts never embedded with the model.

A document that fits in the model's window is one passage: its whole text, with the
content hash (and so the stored vector) it has always had. A longer one is split by
:func:`retrieval.embed.passages.split` on the model's own tokens; each passage's text is
hashed and embedded once per model, like any text. Index rows name (document, ordinal)
(:mod:`retrieval.index.rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.embed.passages import Passage, check_arguments, split, splitter_key
from retrieval.index.rows import PASSAGE_BITS, max_passages, row_ids
from retrieval.store.records import content_hash
from retrieval.store.repository import Store
from retrieval.sync.vectors import EmbedStats, embed_missing


class ChunkSettings(Protocol):
    """What a split is made of: ``IndexSettings`` and ``BuildOptions`` both carry it."""

    @property
    def chunk_tokens(self) -> int | None: ...
    @property
    def chunk_overlap(self) -> int: ...


@dataclass(frozen=True)
class Splitter:
    """How documents become passages: at most ``max_tokens`` tokens each (0: off, one
    passage per document, truncated by the encoder as sentence-transformers truncates),
    overlapping by ``overlap`` tokens."""

    max_tokens: int
    overlap: int = 0

    @classmethod
    def of(cls, index: ChunkSettings, encoder: Encoder) -> Splitter:
        """The split ``index.chunk_tokens`` and ``index.chunk_overlap`` ask for (the
        index settings, or a build's options) with ``encoder``'s window."""
        if index.chunk_tokens == 0 or not encoder.splits_passages:
            return cls(0, 0)
        window = encoder.window
        tokens = window if index.chunk_tokens is None else min(index.chunk_tokens, window)
        check_arguments(tokens, index.chunk_overlap)
        return cls(tokens, index.chunk_overlap)

    def key(self, encoder: Encoder) -> str:
        """What a manifest records: an index split another way is rebuilt."""
        return "off" if not self.max_tokens else splitter_key(encoder.model_key, self.max_tokens, self.overlap)

    def split(self, encoder: Encoder, texts: Sequence[str]) -> list[list[Passage]]:
        if not self.max_tokens:
            return [[Passage(0, 0, len(t))] for t in texts]
        return [split(t, spans, self.max_tokens, self.overlap) for t, spans in zip(texts, encoder.token_spans(texts))]


@dataclass
class PassageVectors:
    """Rows (``row_ids``) and their vectors for a set of documents, in document order."""

    rows: np.ndarray
    matrix: np.ndarray
    documents: int = 0
    long_documents: int = 0  # documents longer than one passage


def passage_vectors(store: Store, encoder: Encoder, splitter: Splitter, docs: Sequence[tuple[int, str, str | None]],
                    stats: EmbedStats | None = None, *, record: bool = False) -> PassageVectors:
    """Vectors of every passage of (id, text, stored hash) rows, embedding only passage
    texts the store has no vector of for this model. Stale or missing document hashes
    (rows written by other programs) are recomputed and saved. With ``record`` (a sync),
    where the passages lie is recorded in the store first (so garbage collection keeps
    their vectors from the moment they are stored)."""
    stats = stats if stats is not None else EmbedStats()
    if not docs:
        return PassageVectors(np.empty(0, np.int64), np.empty((0, encoder.dim or 0), np.float32))
    hashes = [content_hash(text) for _, text, _ in docs]
    fixes = [(doc_id, h) for (doc_id, _, old), h in zip(docs, hashes) if old != h]
    if fixes:
        store.set_hashes(fixes)
    rows, keys, unique, long_docs, spans = _passages(encoder, splitter, [(d, t) for d, t, _ in docs], hashes)
    if record:
        store.save_passages(splitter.key(encoder), spans)
    have, embedded = embed_missing(store, encoder, unique, stats)
    stats.reused += sum(1 for k in keys if k not in embedded)
    matrix = np.stack([have[k] for k in keys]).astype(np.float32, copy=False)
    return PassageVectors(rows, matrix, len(docs), long_docs)


def passage_keys(encoder: Encoder, splitter: Splitter, docs: Sequence[tuple[int, str]]) -> tuple[np.ndarray, list[str]]:
    """The row ids and content hashes of every passage of (id, text) documents, as a sync
    writes them (``verify`` compares an index with them)."""
    rows, keys, _, _, _ = _passages(encoder, splitter, docs, [content_hash(t) for _, t in docs])
    return rows, keys


Spans = list[tuple[int, str, list[tuple[int, int, str]]]]


def _passages(encoder: Encoder, splitter: Splitter, docs: Sequence[tuple[int, str]], hashes: Sequence[str]
              ) -> tuple[np.ndarray, list[str], dict[str, str], int, Spans]:
    """(row ids, content hash per row, text per distinct hash, documents longer than one
    passage, and per document (id, content hash, [(start, end, passage hash)]))."""
    spans: Spans = []
    doc_ids: list[int] = []
    ordinals: list[int] = []
    keys: list[str] = []
    unique: dict[str, str] = {}
    long_docs = 0
    for (doc_id, text), h, passages in zip(docs, hashes, splitter.split(encoder, [t for _, t in docs])):
        if len(passages) > max_passages(PASSAGE_BITS):
            raise ValueError(f"document {doc_id} splits into {len(passages)} passages, more than an index row holds")
        if len(passages) == 1 and passages[0].start == 0 and passages[0].end == len(text):
            pairs = [(h, text)]  # the whole text: the vector it always had
            spans.append((doc_id, h, []))
        else:
            long_docs += 1
            pairs = [(content_hash(p.text(text)), p.text(text)) for p in passages]
            spans.append((doc_id, h, [(p.start, p.end, key) for p, (key, _) in zip(passages, pairs)]))
        for ordinal, (key, body) in enumerate(pairs):
            unique.setdefault(key, body)
            doc_ids.append(doc_id)
            ordinals.append(ordinal)
            keys.append(key)
    rows = row_ids(np.asarray(doc_ids, np.int64), np.asarray(ordinals, np.int64), PASSAGE_BITS)
    return rows, keys, unique, long_docs, spans


def passage_texts(encoder: Encoder, splitter: Splitter, texts: Sequence[str]) -> dict[str, str]:
    """The distinct texts a sync will embed for these documents' texts, by content hash:
    the whole text of one that fits, the passages of a longer one."""
    _, _, unique, _, _ = _passages(encoder, splitter, list(enumerate(texts)), [content_hash(t) for t in texts])
    return unique


def recording_split(store: Store, encoder: Encoder, splitter: Splitter) -> Callable[
        [Sequence[tuple[int, str]], Sequence[str]], dict[int, list[tuple[str, str]]]]:
    """For a bulk embed (:func:`~retrieval.sync.vectors.embed_stored`): split a page of
    documents as a sync would, record where the passages of the long ones lie (so that
    their vectors are kept, and the documents count as embedded once those vectors are
    stored), and give each long document's passages as (hash, text)."""
    key = splitter.key(encoder)

    def split_page(docs: Sequence[tuple[int, str]], hashes: Sequence[str]) -> dict[int, list[tuple[str, str]]]:
        _, _, _, _, spans = _passages(encoder, splitter, docs, hashes)
        store.save_passages(key, spans)
        texts = dict(docs)
        return {doc_id: [(h, texts[doc_id][start:end]) for start, end, h in parts]
                for doc_id, _, parts in spans if parts}

    return split_page
