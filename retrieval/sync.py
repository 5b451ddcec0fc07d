"""Keep the FAISS index in step with the database by replaying the change log.

A sync reads, in one database snapshot, the highest change-log sequence and the current
rows of every document changed since the index's ``last_seq``. It embeds the texts that
have no stored vector for the model (each distinct text once), stores those vectors,
removes the changed ids from a copy of the index, adds back the ones that still exist,
and publishes a new version recording the snapshot's sequence. Vectors are committed
in chunks before the index is published, so a crash at any point repeats at most the
chunk in flight and never leaves the index claiming a change it does not hold.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.index.faiss_index import IndexStore, IndexVersion, build_index
from retrieval.store.repository import Store, content_hash

log = logging.getLogger("retrieval.sync")

# Texts embedded between two commits of their vectors: bounds the work a crash repeats.
EMBED_CHUNK = 4096


@dataclass
class SyncReport:
    changes: int = 0  # distinct documents changed since the previous version
    embedded: int = 0  # distinct texts sent to the encoder
    reused: int = 0  # documents whose vector was already stored
    added: int = 0
    removed: int = 0
    full: bool = False
    version: str | None = None
    last_seq: int = 0
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)
    # The version this sync published (in memory), so the caller can serve it at once.
    published: IndexVersion | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "published"}


def embed_missing(
    store: Store, encoder: Encoder, texts_by_hash: dict[str, str], report: SyncReport | None = None
) -> tuple[dict[str, np.ndarray], set[str]]:
    """Vectors for every content hash given, embedding (in committed chunks) only those
    the store has none of for this model. Returns (hash -> vector, hashes embedded now)."""
    report = report if report is not None else SyncReport()
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
        report.embedded += len(part)
    report.stages["embed"] = report.stages.get("embed", 0.0) + time.perf_counter() - t0
    return have, set(missing)


def ensure_vectors(
    store: Store, encoder: Encoder, docs: Sequence[tuple[int, str, str | None]], report: SyncReport | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vectors for (id, text, stored hash) rows, embedding only texts never embedded.

    Returns (ids, matrix) in the order given. Stale or missing content hashes (rows
    written by other programs) are recomputed and saved.
    """
    report = report if report is not None else SyncReport()
    if not docs:
        return np.empty(0, dtype=np.int64), np.empty((0, encoder.dim or 0), dtype=np.float32)
    hashes = [content_hash(text) for _, text, _ in docs]
    fixes = [(doc_id, h) for (doc_id, _, old), h in zip(docs, hashes) if old != h]
    if fixes:
        store.set_hashes(fixes)
    unique: dict[str, str] = {}
    for (_, text, _), h in zip(docs, hashes):
        unique.setdefault(h, text)
    have, embedded = embed_missing(store, encoder, unique, report)
    report.reused += sum(1 for h in hashes if h not in embedded)
    ids = np.fromiter((d[0] for d in docs), dtype=np.int64, count=len(docs))
    matrix = np.stack([have[h] for h in hashes]).astype(np.float32, copy=False)
    return ids, matrix


def full_build(store: Store, index_store: IndexStore, encoder: Encoder, index_type: str, **index_kw: Any) -> SyncReport:
    """Build a new index from every document (embedding only what was never embedded)."""
    t0 = time.perf_counter()
    report = SyncReport(full=True)
    with store.read() as conn:
        last_seq = store.max_seq(conn)
        docs = [row for batch in store.iter_docs(conn) for row in batch]
    report.stages["read"] = time.perf_counter() - t0
    ids, matrix = ensure_vectors(store, encoder, docs, report)
    t1 = time.perf_counter()
    index = build_index(encoder.dim, index_type, **index_kw)
    if len(ids):
        index.add_with_ids(matrix, ids)
    version = index_store.publish(index, model_key=encoder.model_key, index_type=index_type, last_seq=last_seq)
    report.published = version
    report.stages["index"] = time.perf_counter() - t1
    report.changes = report.added = len(ids)
    report.version = version.manifest.version
    report.last_seq = last_seq
    report.seconds = time.perf_counter() - t0
    log.info("full build: %d documents, %d embedded, version %s", len(ids), report.embedded, report.version)
    return report


def incremental(
    store: Store,
    index_store: IndexStore,
    encoder: Encoder,
    base: IndexVersion,
    *,
    max_changes: int | None = None,
    **index_kw: Any,
) -> SyncReport:
    """Apply the change log after ``base``'s sequence and publish a new version.

    ``max_changes`` bounds the change-log entries applied in one version (the worker
    publishes a large backlog in several steps, so searches see progress early).
    """
    t0 = time.perf_counter()
    report = SyncReport(last_seq=base.manifest.last_seq, version=base.manifest.version)
    with store.read() as conn:
        last_seq = store.max_seq(conn)
        if max_changes is not None:
            last_seq = min(last_seq, base.manifest.last_seq + max_changes)
        if last_seq <= base.manifest.last_seq:
            report.seconds = time.perf_counter() - t0
            return report
        changed = store.changed_ids(conn, base.manifest.last_seq, last_seq)
        present = store.docs_by_ids(conn, changed)
    report.stages["read"] = time.perf_counter() - t0
    rows = [(d.id, d.text, d.content_hash) for d in present.values()]
    ids, matrix = ensure_vectors(store, encoder, rows, report)
    t1 = time.perf_counter()
    changed_arr = np.asarray(changed, dtype=np.int64)
    in_index = np.isin(changed_arr, base.ids)
    index_type = base.manifest.index_type
    if index_type == "hnsw" and in_index.any():
        # HNSW cannot remove vectors: rebuild from stored vectors (no re-embedding).
        return full_build(store, index_store, encoder, index_type, **index_kw)
    import faiss

    index = faiss.clone_index(base.index)
    if in_index.any():
        index.remove_ids(changed_arr[in_index])
    if len(ids):
        index.add_with_ids(matrix, ids)
    version = index_store.publish(index, model_key=encoder.model_key, index_type=index_type, last_seq=last_seq)
    report.published = version
    report.stages["index"] = time.perf_counter() - t1
    report.changes = len(changed)
    report.removed = int(in_index.sum()) - sum(1 for i in changed_arr[in_index] if int(i) in present)
    report.added = len(ids)
    report.version = version.manifest.version
    report.last_seq = last_seq
    report.seconds = time.perf_counter() - t0
    log.info("sync: %d changes, %d embedded, version %s", report.changes, report.embedded, report.version)
    return report
