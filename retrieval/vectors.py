"""Stored vectors: read them, and embed (in committed chunks) only texts never embedded.

Vectors are keyed by (model key, content hash), so a text is embedded once per model,
whoever asks: a sync, a search scoring a document the index has not caught up with, or
an HTTP write embedding ahead of its commit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.store.repository import Store, content_hash

# Texts embedded between two commits of their vectors: bounds the work a crash repeats.
EMBED_CHUNK = 4096


@dataclass
class EmbedStats:
    embedded: int = 0  # distinct texts sent to the encoder
    reused: int = 0  # documents whose vector was already stored
    seconds: float = 0.0  # time in the encoder and storing its vectors


def embed_missing(
    store: Store, encoder: Encoder, texts_by_hash: dict[str, str], stats: EmbedStats | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Vectors for every content hash given, embedding (in committed chunks) only those
    the store has none of for this model. Returns (hash -> vector, hashes embedded now)."""
    stats = stats if stats is not None else EmbedStats()
    model_key = encoder.model_key
    with store.read() as conn:
        have = store.embeddings_for(conn, model_key, list(texts_by_hash))
    missing = [h for h in texts_by_hash if h not in have]
    t0 = time.perf_counter()
    for start in range(0, len(missing), EMBED_CHUNK):
        part = missing[start : start + EMBED_CHUNK]
        vecs = encoder.encode([texts_by_hash[h] for h in part])
        if vecs.shape[1] != encoder.dim:
            raise RuntimeError(f"encoder returned {vecs.shape[1]} dimensions, expected {encoder.dim}")
        store.add_embeddings(model_key, encoder.dim, list(zip(part, vecs)))
        have.update(zip(part, vecs))
        stats.embedded += len(part)
    stats.seconds += time.perf_counter() - t0
    return have, set(missing)


def ensure_vectors(
    store: Store, encoder: Encoder, docs: Sequence[tuple[int, str, str | None]], stats: EmbedStats | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for (id, text, stored hash) rows, embedding only texts never embedded.

    Returns (ids, matrix) in the order given. Stale or missing content hashes (rows
    written by other programs) are recomputed and saved.
    """
    stats = stats if stats is not None else EmbedStats()
    if not docs:
        return np.empty(0, dtype=np.int64), np.empty((0, encoder.dim or 0), dtype=np.float32)
    hashes = [content_hash(text) for _, text, _ in docs]
    fixes = [(doc_id, h) for (doc_id, _, old), h in zip(docs, hashes) if old != h]
    if fixes:
        store.set_hashes(fixes)
    unique: dict[str, str] = {}
    for (_, text, _), h in zip(docs, hashes):
        unique.setdefault(h, text)
    have, embedded = embed_missing(store, encoder, unique, stats)
    stats.reused += sum(1 for h in hashes if h not in embedded)
    ids = np.fromiter((d[0] for d in docs), dtype=np.int64, count=len(docs))
    matrix = np.stack([have[h] for h in hashes]).astype(np.float32, copy=False)
    return ids, matrix
