"""What a store holds and how its index stands: :func:`lag` (what a monitor polls),
:func:`status` (`retrieve status`), :func:`verify` (`retrieve verify`: exact agreement of
the index with the database). None of them runs the model or loads torch; verify reads
the model's tokenizer (``passage_keys``), to split documents as the sync did."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.errors import IndexCorruptError, RetrievalError
from retrieval.index.manifest import SegmentMeta
from retrieval.index.rows import docs_of
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore
from retrieval.store import db
from retrieval.store.records import content_hash
from retrieval.store.repository import Store
from retrieval.sync.keeper import plan_merges_for
from retrieval.sync.replay import follows
from retrieval.sync.space import reclaimable
from retrieval.sync.states import read_state, read_states


@dataclass
class VerifyReport:
    ok: bool
    documents: int
    indexed: int
    pending: int
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lag(store: Store, index_store: IndexStore) -> dict[str, Any]:
    """How far the index is behind the database: change-log entries not yet applied, the
    age of the oldest, the current version, and whether the index follows this database
    at all (reads one manifest and the log)."""
    manifest = index_store.read_manifest()
    pending, oldest = store.backlog(manifest.last_seq if manifest else 0)
    diverged = None
    if manifest is not None:
        with store.read() as snap:
            diverged = follows(snap, manifest)
    return {
        "pending_changes": pending,
        "lag_seconds": round(max(0.0, time.time() - oldest), 3) if oldest is not None else 0.0,
        "index_version": manifest.version if manifest else None,
        "indexed": manifest.count if manifest else 0,
        "last_seq": manifest.last_seq if manifest else 0,
        # Why the index does not follow this database (a restore): the next sync or
        # search rebuilds it. None when it does.
        "diverged": diverged,
    }


def vitals(store: Store, index_store: IndexStore, replica: str) -> dict[str, Any]:
    """The figures a monitor polls: :func:`lag`, documents and the index's size on disk."""
    manifest = index_store.read_manifest()
    segments = manifest.segments if manifest else ()
    rows = sum(s.rows for s in segments)
    worker = read_state(store, replica) or {}
    last_merge = (manifest.last_merge or {}) if manifest else {}
    return {**lag(store, index_store), "documents": store.count_documents(), "index_bytes": index_store.disk_usage(),
            "segments": len(segments), "tombstone_fraction": sum(s.dead for s in segments) / rows if rows else 0.0,
            "merging": bool(worker.get("running") and worker.get("merging")),
            "merges_done": int(worker.get("merges_done") or 0), "last_merge_at": last_merge.get("at")}


def status(settings: Settings, store: Store, index_store: IndexStore, replica: str) -> dict[str, Any]:
    """Counts, model, index version and sizes, every replica's worker; loads neither the
    model nor torch."""
    from retrieval.embed import plan_for
    from retrieval.embed.choice import EncoderPlan

    try:
        encoder_plan = plan_for(settings, prefer_key=index_store.model_key())
        model_key = encoder_plan.model_key
    except RetrievalError as exc:
        model_key = f"unavailable ({exc})"
        encoder_plan = EncoderPlan(settings.encoder.backend, settings.encoder.precision, model_key, None,
                                   f"{settings.encoder.backend} {settings.encoder.precision}")
    stats = store.stats(model_key)
    manifest = index_store.read_manifest()
    now = lag(store, index_store)
    workers = read_states(store)  # every replica's, this one's among them
    return {
        "database": db.describe_url(settings.store.database_url),
        "replica": replica,
        "index_dir": settings.store.index_dir,
        "documents": stats["documents"],
        "embedded": stats["embedded"],
        "stored_vectors": stats["stored_vectors"],
        "indexed": now["indexed"],
        "pending_changes": now["pending_changes"],
        "last_seq": now["last_seq"],
        "max_seq": stats["max_seq"],
        "model": settings.encoder.model,
        "model_key": model_key,
        "language_model": encoder_plan.backend not in ("hash", "external"),
        "index_model_key": manifest.model_key if manifest else None,
        "model_matches_index": manifest is None or manifest.model_key == model_key,
        "index_type": manifest.index_type if manifest else settings.index.type,
        "index_version": now["index_version"],
        "segments": [_segment_status(s) for s in manifest.segments] if manifest else [],
        "last_merge": manifest.last_merge if manifest else None,
        "pending_merges": [p.describe() for p in plan_merges_for(manifest, settings)],
        "database_bytes": store.database_bytes(),
        "index_bytes": index_store.disk_usage(),
        "lag_seconds": round(now["lag_seconds"], 1),
        "diverged": now["diverged"],
        "worker": next((w for w in workers if w["name"] == replica), None),
        "workers": workers,
        "reclaimable": reclaimable(store, index_store, replica),
        "backend": encoder_plan.backend,  # what runs: torch after a fallback
        "precision": encoder_plan.precision,
        "backend_note": encoder_plan.note,
        "backend_requested": encoder_plan.requested,
    }


def verify(store: Store, index_store: IndexStore, version: IndexVersion,
           passage_keys: Callable[[list[tuple[int, str]]], tuple[np.ndarray, list[str]]]) -> VerifyReport:
    """Check that the index ``version`` agrees exactly with the database, and every
    segment file with its checksum. Differences explained by changes not yet synced are
    reported as pending, not drift."""
    problems: list[str] = []
    m = version.manifest
    for view in version.views:
        try:
            index_store.check_segment_file(view.meta)
        except IndexCorruptError as exc:
            problems.append(str(exc))
        if len(view.segment.ids) > 1 and not np.all(np.diff(view.segment.ids) > 0):
            problems.append(f"segment {view.meta.name}: its ids are not strictly ascending")
    index_ids = version.ids
    unique, counts = np.unique(index_ids, return_counts=True)
    for i in unique[counts > 1][:20]:
        problems.append(f"document {int(i)} is live in more than one segment")
    vectors = version.vectors()
    with store.read() as snap:
        diverged = follows(snap, m)
        if diverged is not None:
            problems.append(f"the index does not follow this database: {diverged}; the next sync or search "
                            "rebuilds it from the stored vectors")
        max_seq = snap.max_seq()
        pending = set(snap.changed_ids(m.last_seq, max_seq)) if max_seq > m.last_seq else set()
        rows = [r for batch in snap.iter_docs() for r in batch]
        hashes = {doc_id: content_hash(text_) for doc_id, text_, _ in rows}
        if m.passage_bits:
            _, all_keys = passage_keys([(doc_id, text_) for doc_id, text_, _ in rows])
            stored = snap.embeddings(m.model_key, set(all_keys))
        else:
            stored = snap.embeddings(m.model_key, set(hashes.values()))
        problems.extend(snap.keyword_problems())
        problems.extend(f"document {e!r}: its metadata is not valid JSON (a NaN or infinity stored by an older "
                        "version); filtered searches fail on it: ingest it again with valid metadata"
                        for e in snap.invalid_metadata())
    in_index = {int(i): pos for pos, i in enumerate(index_ids)}
    in_db = set(hashes)
    indexed_docs = set(docs_of(index_ids, m.passage_bits).tolist())
    for i in sorted(indexed_docs - in_db - pending):
        problems.append(f"document {i} is in the index but not in the database")
    for i in sorted(in_db - indexed_docs - pending):
        problems.append(f"document {i} is in the database but not in the index")
    current = sorted((in_db & indexed_docs) - pending)
    if m.passage_bits:
        by_id = dict((doc_id, text_) for doc_id, text_, _ in rows)
        expected_rows, keys = passage_keys([(i, by_id[i]) for i in current])
    else:  # an index from before passages: a row per document, its whole text
        expected_rows, keys = np.asarray(current, np.int64), [hashes[i] for i in current]
    owners = docs_of(expected_rows, m.passage_bits)
    extra = index_ids[np.isin(docs_of(index_ids, m.passage_bits), current) & ~np.isin(index_ids, expected_rows)]
    for row in np.sort(extra)[:20].tolist():
        problems.append(f"document {int(docs_of(np.array([row]), m.passage_bits)[0])}: the index holds a passage "
                        f"({row}) its current text does not split into")
    seen_bad: set[int] = set()
    for row, doc, key in zip(expected_rows.tolist(), owners.tolist(), keys):
        if doc in seen_bad:
            continue
        vec = stored.get(key)
        if row not in in_index:
            problems.append(f"document {doc}: passage row {row} of its current text is not in the index")
            seen_bad.add(doc)
        elif vec is None:
            problems.append(f"document {doc} has no stored embedding for {m.model_key}")
            seen_bad.add(doc)
        elif not np.allclose(vectors[in_index[row]], vec, atol=1e-6):
            problems.append(f"document {doc}: the indexed vector is not the embedding of its current text")
            seen_bad.add(doc)
    return VerifyReport(ok=not problems, documents=len(in_db), indexed=len(indexed_docs), pending=len(pending),
                        problems=problems)


def _segment_status(meta: SegmentMeta) -> dict[str, Any]:
    return {"name": meta.name, "type": meta.kind, "passages": meta.live, "rows": meta.rows,
            "tombstones": round(meta.tombstone_fraction, 4), "recall": meta.recall, "ef_search": meta.ef_search,
            "exact_by_guard": meta.exact_by_guard, "origin": meta.origin,
            "bytes": meta.faiss.bytes + (meta.vectors.bytes if meta.vectors else 0),
            "memory_bytes": meta.faiss.bytes + meta.ids.bytes, "nprobe": meta.nprobe, "rescore": meta.rescore,
            "calibration": meta.calibration}
