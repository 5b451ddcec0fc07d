"""Keeping a store healthy: deciding when to reindex, and giving space back.

The policy lives here; the SQL it needs is the store's, the FAISS calls the index's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from retrieval.errors import IndexCorruptError
from retrieval.index.legacy import LegacyIndexFound

log = logging.getLogger("retrieval.maintenance")


@dataclass(frozen=True)
class ReindexDecision:
    needed: bool
    reason: str


def reindex_needed(retriever: Any) -> ReindexDecision:
    """Whether a full rebuild is worth it now, and why (or why not). Merges the policy
    asks for are not a reason: they run segment by segment (:meth:`Retriever.merge`)."""
    settings = retriever.settings
    try:
        version = retriever.index_store.load()
    except LegacyIndexFound:
        return ReindexDecision(False, "the index is in the single-file format; it is converted on first use")
    except IndexCorruptError as exc:
        return ReindexDecision(True, f"the index is damaged ({exc})")
    if version is None:
        return ReindexDecision(True, "there is no index yet")
    m = version.manifest
    configured = retriever.encoder.model_key
    if m.model_key != configured:
        return ReindexDecision(True, f"the configured model changed ({m.model_key} -> {configured})")
    graphs = {s.hnsw_m for s in m.segments if s.kind == "hnsw"}
    if graphs and graphs != {settings.hnsw_m}:
        return ReindexDecision(True, f"hnsw_m changed ({', '.join(map(str, sorted(graphs)))} -> {settings.hnsw_m})")
    # Segments of the wrong type for index_type, or with many dead rows, are rewritten by
    # merges; no segment type here is trained, so none drifts.
    return ReindexDecision(False, f"the index is current ({m.count} documents in {len(m.segments)} segments, "
                                  f"{m.model_key}, {m.index_type})")


def change_log_floor(retriever: Any) -> int:
    """Change-log rows below this position may go: every index version kept here has
    applied them, and so has every other replica following the database (their workers'
    positions are rows of ``workers``). A replica that is gone for good holds the log
    back until ``retrieve forget-replica`` removes its row."""
    from retrieval.store.workers import load_states

    floor = retriever.index_store.applied_floor()
    for state in load_states(retriever.store):
        if state["name"] != retriever.replica_name:
            floor = min(floor, int(state.get("last_seq") or 0))
    return floor


def reclaimable(retriever: Any) -> dict[str, int]:
    """What `compact` would give back: unused vectors, applied change-log rows, free pages,
    old index versions."""
    manifest = retriever.index_store.read_manifest()
    keep_model = manifest.model_key if manifest else None
    found = retriever.store.reclaimable(keep_model, change_log_floor(retriever))
    found["old_index_version_bytes"] = retriever.index_store.old_version_bytes()
    return found


def collect_garbage(retriever: Any, *, other_models: bool = False) -> dict[str, int]:
    """Delete unused vectors (of the index's model; of every other model too with
    ``other_models``) and applied change-log rows. Cheap enough for every worker cycle."""
    manifest = retriever.index_store.read_manifest()
    if manifest is None:
        return {"embeddings": 0, "changes": 0}
    removed, pruned = retriever.store.collect_garbage(manifest.model_key, change_log_floor(retriever),
                                                      other_models=other_models)
    return {"embeddings": removed, "changes": pruned}


def compact(retriever: Any) -> dict[str, Any]:
    """Run every merge the policy asks for, then reclaim everything reclaimable, including
    the SQLite file's free pages."""
    merges = retriever.merge()
    with retriever._sync_lock():
        freed_index = retriever.index_store.collect_garbage(keep=1)
    removed = collect_garbage(retriever, other_models=True)
    retriever.store.vacuum()
    return {"embeddings_removed": removed["embeddings"], "changes_removed": removed["changes"], "index_bytes_freed": freed_index,
            "merges": [m.as_dict() for m in merges]}
