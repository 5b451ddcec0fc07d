"""Space a store can give back: vectors no document uses, change-log rows every follower
has applied, free database pages and old index versions. The policy lives here; the SQL
it needs is the store's, the files the index's."""

from __future__ import annotations

from typing import Any

from retrieval.config import SearchSettings
from retrieval.index.store import IndexStore
from retrieval.store.repository import Store
from retrieval.store.workers import load_states


def change_log_floor(store: Store, index_store: IndexStore, replica: str) -> int:
    """Change-log rows below this position may go: every index version kept here has
    applied them, and so has every other replica following the database (their workers'
    positions are rows of ``workers``). A replica that is gone for good holds the log
    back until ``retrieve forget-replica`` removes its row."""
    floor = index_store.applied_floor()
    for state in load_states(store):
        if state["name"] != replica:
            floor = min(floor, int(state.get("last_seq") or 0))
    return floor


def reclaimable(store: Store, index_store: IndexStore, replica: str) -> dict[str, int]:
    """What `compact` would give back: unused vectors, applied change-log rows, free pages,
    old index versions."""
    manifest = index_store.read_manifest()
    keep_model = manifest.model_key if manifest else None
    found = store.reclaimable(keep_model, change_log_floor(store, index_store, replica))
    found["old_index_version_bytes"] = index_store.old_version_bytes()
    return found


def collect_garbage(store: Store, index_store: IndexStore, replica: str, *,
                    other_models: bool = False, search: SearchSettings | None = None) -> dict[str, Any]:
    """Delete unused vectors (of the index's model; of every other model too with
    ``other_models``) and applied change-log rows. Cheap enough for every worker cycle.

    With ``other_models``, other models' query samples go too; with ``search`` as well,
    the index's model's sample is cut to ``search.query_sample`` and its texts are
    cleared unless ``search.log_queries``: what was recorded under earlier settings."""
    manifest = index_store.read_manifest()
    if manifest is None:
        return {"embeddings": 0, "changes": 0, "query_samples": 0}
    removed, pruned = store.collect_garbage(manifest.model_key, change_log_floor(store, index_store, replica),
                                            other_models=other_models)
    samples = 0
    if other_models:
        samples = store.prune_queries(manifest.model_key, search.query_sample if search else None,
                                      keep_texts=search.log_queries if search else True)
    return {"embeddings": removed, "changes": pruned, "query_samples": samples}
