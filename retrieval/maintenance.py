"""Keeping a store healthy: deciding when to reindex, and giving space back."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, exists, func, not_, select

from retrieval.errors import IndexCorruptError
from retrieval.store.models import Change, Document, Embedding

log = logging.getLogger("retrieval.maintenance")


@dataclass(frozen=True)
class ReindexDecision:
    needed: bool
    reason: str


def reindex_needed(retriever: Any) -> ReindexDecision:
    """Whether a full rebuild is worth it now, and why (or why not)."""
    settings = retriever.settings
    try:
        version = retriever.index_store.load()
    except IndexCorruptError as exc:
        return ReindexDecision(True, f"the index is damaged ({exc})")
    if version is None:
        return ReindexDecision(True, "there is no index yet")
    m = version.manifest
    configured = retriever.encoder.model_key
    if m.model_key != configured:
        return ReindexDecision(True, f"the configured model changed ({m.model_key} -> {configured})")
    if m.index_type != settings.index_type:
        return ReindexDecision(True, f"the configured index type changed ({m.index_type} -> {settings.index_type})")
    if m.index_type == "hnsw":
        import faiss

        inner = faiss.downcast_index(version.index.index)
        graph_m = inner.hnsw.nb_neighbors(1)
        if graph_m != settings.hnsw_m:
            return ReindexDecision(True, f"hnsw_m changed ({graph_m} -> {settings.hnsw_m})")
    # Exact indexes remove vectors physically on every sync, and HNSW versions are rebuilt
    # whenever a document changes, so neither accumulates removed entries; no index type
    # here is trained, so none drifts.
    return ReindexDecision(False, f"the index is current ({m.count} documents, {m.model_key}, {m.index_type})")


def _unused_embeddings(model_keep: str | None) -> Any:
    """Embeddings no document uses: hashes of no current text, or another model's vectors."""
    used = exists().where(Document.content_hash == Embedding.content_hash)
    condition = not_(used)
    if model_keep is not None:
        condition = condition | (Embedding.model_key != model_keep)
    return condition


def reclaimable(retriever: Any) -> dict[str, int]:
    """What `compact` would give back: unused vectors, applied change-log rows, free pages."""
    manifest = retriever.index_store.read_manifest()
    keep_model = manifest.model_key if manifest else None
    floor = _applied_floor(retriever)
    with retriever.store.read() as conn:
        unused = conn.execute(
            select(func.count(), func.coalesce(func.sum(func.length(Embedding.vector)), 0)).where(
                _unused_embeddings(keep_model)
            )
        ).one()
        changes = int(conn.scalar(select(func.count()).select_from(Change).where(Change.seq < floor)) or 0)
        free_bytes = 0
        if conn.dialect.name == "sqlite":
            free_bytes = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar() or 0) * int(
                conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
            )
    return {
        "unused_embeddings": int(unused[0]),
        "unused_embedding_bytes": int(unused[1]),
        "applied_changes": changes,
        "free_database_bytes": free_bytes,
        "old_index_version_bytes": _old_version_bytes(retriever),
    }


def _applied_floor(retriever: Any) -> int:
    """The lowest last_seq among the index versions kept on disk: log rows at or below it
    are applied everywhere and no reader needs them any more."""
    store = retriever.index_store
    if not store.versions_dir.is_dir():
        return 0
    seqs = []
    for p in store.versions_dir.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            m = store.read_manifest(p.name)
            if m is not None:
                seqs.append(m.last_seq)
    return min(seqs) if seqs else 0


def _old_version_bytes(retriever: Any) -> int:
    store = retriever.index_store
    current = store.current_name()
    if not store.versions_dir.is_dir():
        return 0
    return sum(
        f.stat().st_size
        for p in store.versions_dir.iterdir()
        if p.is_dir() and p.name != current
        for f in p.glob("*")
        if f.is_file()
    )


def collect_garbage(retriever: Any, *, other_models: bool = False) -> dict[str, int]:
    """Delete unused vectors (of the index's model; of every other model too with
    ``other_models``) and applied change-log rows. Cheap enough for every worker cycle."""
    manifest = retriever.index_store.read_manifest()
    if manifest is None:
        return {"embeddings": 0, "changes": 0}
    floor = _applied_floor(retriever)
    with retriever.store.write() as conn:
        if other_models:
            cond = _unused_embeddings(manifest.model_key)
        else:
            cond = and_(Embedding.model_key == manifest.model_key, _unused_embeddings(None))
        removed = conn.execute(delete(Embedding).where(cond)).rowcount
        pruned = conn.execute(delete(Change).where(Change.seq < floor)).rowcount if floor > 0 else 0
    return {"embeddings": int(removed or 0), "changes": int(pruned or 0)}


def compact(retriever: Any) -> dict[str, int]:
    """Reclaim everything reclaimable, including the SQLite file's free pages."""
    freed_index = retriever.index_store.collect_garbage(keep=1)
    removed = collect_garbage(retriever, other_models=True)
    if retriever.store.engine.dialect.name == "sqlite":
        # VACUUM cannot run inside a transaction, and SQLAlchemy begins one on first use:
        # run it on the driver connection, which is in autocommit mode (see store/db.py).
        raw = retriever.store.engine.raw_connection()
        try:
            raw.driver_connection.execute("VACUUM")
            raw.driver_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()
    return {"embeddings_removed": removed["embeddings"], "changes_removed": removed["changes"], "index_bytes_freed": freed_index}
