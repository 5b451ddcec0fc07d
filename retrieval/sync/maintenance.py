"""Keeping a store healthy: deciding when to reindex, and compacting it (merges, then
every byte :mod:`retrieval.sync.space` can give back). Above the retriever: it runs
merges and reads the encoder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from retrieval.errors import IndexCorruptError
from retrieval.index.legacy import LegacyIndexFound
from retrieval.sync.space import collect_garbage

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

log = logging.getLogger("retrieval.maintenance")


@dataclass(frozen=True)
class ReindexDecision:
    needed: bool
    reason: str


def reindex_needed(retriever: Retriever) -> ReindexDecision:
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
    graphs = {s.hnsw_m for s in m.segments if s.kind == "hnsw" and s.hnsw_m is not None}
    if graphs and graphs != {settings.index.hnsw_m}:
        return ReindexDecision(True, f"hnsw_m changed ({', '.join(map(str, sorted(graphs)))} -> {settings.index.hnsw_m})")
    # Segments of the wrong type for index_type, or with many dead rows, are rewritten by
    # merges; a compressed segment's quantiser is trained on its own rows when it is
    # built (each merge trains afresh), so none drifts far.
    return ReindexDecision(False, f"the index is current ({m.count} documents in {len(m.segments)} segments, "
                                  f"{m.model_key}, {m.index_type})")


def compact(retriever: Retriever, *, fewest: bool = False) -> dict[str, Any]:
    """Run every merge the policy asks for (with ``fewest``: down to the fewest segments
    the memory budget allows), then reclaim everything reclaimable, including the SQLite
    file's free pages."""
    merges = retriever.merge() + (retriever.merge(fewest=True) if fewest else [])
    with retriever.sync_lock():
        freed_index = retriever.index_store.collect_garbage(keep=1)
    removed = collect_garbage(retriever.store, retriever.index_store, retriever.replica_name, other_models=True,
                              search=retriever.settings.search)
    retriever.store.vacuum()
    return {"embeddings_removed": removed["embeddings"], "changes_removed": removed["changes"], "index_bytes_freed": freed_index,
            "query_samples_removed": removed["query_samples"], "merges": [m.as_dict() for m in merges]}
