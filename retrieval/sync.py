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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.index.faiss_index import IndexStore, IndexVersion, apply_changes, build_index
from retrieval.store.repository import Store
from retrieval.vectors import EmbedStats, ensure_vectors

log = logging.getLogger("retrieval.sync")


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

    def vectors_for(self, store: Store, encoder: Encoder, rows: list[tuple[int, str, str | None]]) -> tuple[Any, Any]:
        """:func:`ensure_vectors`, counting what was embedded and reused in this report."""
        stats = EmbedStats()
        ids, matrix = ensure_vectors(store, encoder, rows, stats)
        self.embedded += stats.embedded
        self.reused += stats.reused
        self.stages["embed"] = self.stages.get("embed", 0.0) + stats.seconds
        return ids, matrix


def full_build(store: Store, index_store: IndexStore, encoder: Encoder, index_type: str, **index_kw: Any) -> SyncReport:
    """Build a new index from every document (embedding only what was never embedded)."""
    t0 = time.perf_counter()
    report = SyncReport(full=True)
    with store.read() as conn:
        last_seq = store.max_seq(conn)
        docs = [row for batch in store.iter_docs(conn) for row in batch]
    report.stages["read"] = time.perf_counter() - t0
    ids, matrix = report.vectors_for(store, encoder, docs)
    t1 = time.perf_counter()
    index = build_index(encoder.dim, index_type, ids=ids, vectors=matrix, **index_kw)
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
    ids, matrix = report.vectors_for(store, encoder, rows)
    t1 = time.perf_counter()
    changed_arr = np.asarray(changed, dtype=np.int64)
    in_index = np.isin(changed_arr, base.ids)
    index_type = base.manifest.index_type
    if index_type == "hnsw" and in_index.any():
        # HNSW cannot remove vectors: rebuild from stored vectors (no re-embedding).
        return full_build(store, index_store, encoder, index_type, **index_kw)
    index = apply_changes(base.index, remove=changed_arr[in_index], add_ids=ids, add_vectors=matrix)
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
