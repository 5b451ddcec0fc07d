"""Keep the segmented index in step with the database by replaying the change log.

A sync reads, in one database snapshot, the highest change-log sequence and the current
rows of every document changed since the index's ``last_seq``. It embeds the texts that
have no stored vector for the model (each distinct text once), stores those vectors, and
publishes a new manifest generation holding:

* one new segment with the changed documents' current vectors;
* new tombstone files for the segments that held their old rows (a delete is a tombstone
  only; a segment left with no live row is dropped);
* the snapshot's sequence as ``last_seq``.

No existing segment is rewritten, so a sync costs what changed. Vectors are committed in
chunks before the index is published, so a crash at any point repeats at most the chunk
in flight and never leaves the index claiming a change it does not hold.

Before it applies anything, a sync checks that the database is the one the index
follows (:func:`follows`); a full build (:func:`full_build`) starts a new index.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.index.build import BuildOptions, Calibration
from retrieval.index.legacy import read_legacy
from retrieval.index.manifest import Manifest, SegmentMeta
from retrieval.index.rows import PASSAGE_BITS, docs_of
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore
from retrieval.store.records import FIRST_PAGE, page_size
from retrieval.store.repository import Store
from retrieval.sync.passages import Splitter, passage_vectors
from retrieval.sync.vectors import EmbedStats

if TYPE_CHECKING:
    from retrieval.store.snapshot import Snapshot

log = logging.getLogger("retrieval.sync")


@dataclass
class SyncReport:
    changes: int = 0  # distinct documents changed since the previous generation
    embedded: int = 0  # distinct texts sent to the encoder
    reused: int = 0  # documents whose vector was already stored
    added: int = 0  # documents
    removed: int = 0
    passages: int = 0  # rows written for the documents added
    long_documents: int = 0  # added documents longer than one passage
    full: bool = False
    version: str | None = None
    last_seq: int = 0
    seconds: float = 0.0
    bytes_written: int = 0  # under index_dir, by this sync
    segments: int = 0  # in the generation it published
    stages: dict[str, float] = field(default_factory=dict)
    merges: list[dict[str, Any]] = field(default_factory=list)  # run inline after the sync
    # The generation this sync published (opened), so the caller can serve it at once.
    published: IndexVersion | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "published"}

    def vectors_for(self, store: Store, encoder: Encoder, splitter: Splitter,
                    rows: list[tuple[int, str, str | None]]) -> tuple[Any, Any]:
        """:func:`passage_vectors`, counting what was embedded and reused in this report."""
        stats = EmbedStats()
        got = passage_vectors(store, encoder, splitter, rows, stats, record=True)
        self.embedded += stats.embedded
        self.reused += stats.reused
        self.passages += len(got.rows)
        self.long_documents += got.long_documents
        self.stages["embed"] = self.stages.get("embed", 0.0) + stats.seconds
        return got.rows, got.matrix

    def finish(self, index_store: IndexStore, version: IndexVersion, written_before: int, t0: float) -> SyncReport:
        self.published = version
        self.version = version.manifest.version
        self.last_seq = version.manifest.last_seq
        self.segments = len(version.manifest.segments)
        self.bytes_written = index_store.bytes_written - written_before
        self.seconds = time.perf_counter() - t0
        return self


def follows(snap: Snapshot, manifest: Manifest, *, max_seq: int | None = None, identity: bool = True) -> str | None:
    """None when the snapshot's database is the one ``manifest``'s index follows, at or past
    its position; otherwise why not, in words.

    A database restored from a backup (or replaced by a copy of another store) can be
    behind the index, or hold other changes under the positions the index applied, and
    reuse the internal ids it holds: served as it is, the index would return deleted
    documents and lend old vectors to new ones. ``identity`` compares the store ids too
    (a sync does; a search relies on the change token, one primary-key read)."""
    if identity and manifest.store_id and snap.store_id() != manifest.store_id:
        return "the index was built from another database (its store id differs)"
    max_seq = snap.max_seq() if max_seq is None else max_seq
    if max_seq < manifest.last_seq:
        return (f"the database's change log ends at {max_seq}, before the index's position {manifest.last_seq} "
                "(was the database restored from a backup?)")
    if manifest.store_id and manifest.last_seq:
        token = snap.change_token(manifest.last_seq)
        if token is None:
            return f"the change the index last applied ({manifest.last_seq}) is not in the database's change log"
        if token != (manifest.anchor or ""):
            return (f"the database's change {manifest.last_seq} is not the one the index applied (was the database "
                    "restored from a backup, or replaced by another copy?)")
    return None


def _position(snap: Snapshot, seq: int) -> dict[str, Any]:
    """What a manifest records of the database it follows at ``seq``."""
    return {"last_seq": seq, "store_id": snap.store_id(), "anchor": snap.change_token(seq)}


# Documents whose texts a sync holds at once, and about how much text that may be (pages
# of large documents are smaller): each page's vectors are kept, its texts dropped.
TEXT_PAGE = 2048
TEXT_PAGE_BYTES = 8 << 20


def _joined(parts: list[tuple[np.ndarray, np.ndarray]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, np.int64), np.empty((0, dim), np.float32)
    return np.concatenate([i for i, _ in parts]), np.concatenate([v for _, v in parts])


def full_build(store: Store, index_store: IndexStore, encoder: Encoder, opts: BuildOptions,
               calibration: Callable[[], Calibration | None] | None = None) -> SyncReport:
    """Build a new index from every document (embedding only what was never embedded):
    segments typed by their size, each of at most what a build holds within
    ``merge_memory_mb`` (one segment, below that). ``calibration``: the recall guard's
    queries (the store's recent real queries), asked for once a segment is approximate."""
    t0 = time.perf_counter()
    written = index_store.bytes_written
    report = SyncReport(full=True)
    splitter = Splitter.of(opts, encoder)
    # Memory holds one segment's float vectors at a time.
    chunk = opts.max_rows("flat", encoder.dim)
    generation = index_store.next_generation()
    segments: list[SegmentMeta] = []
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    held = 0
    passages = 0
    documents = 0  # a document's passages are in one segment: its page is never split
    index_seconds = 0.0
    queries: list[Calibration | None] = []  # asked for once

    def flush() -> None:
        nonlocal held, passages, documents, index_seconds
        ids, matrix = _joined(parts, encoder.dim)
        parts.clear()
        held = 0
        if len(ids):
            t1 = time.perf_counter()
            if calibration is not None and not queries and opts.kind_for(len(ids)) != "flat":
                queries.append(calibration())
            segments.append(index_store.write_segment(ids, matrix, opts=opts, origin="build", generation=generation,
                                                      calibration=queries[0] if queries else None))
            index_seconds += time.perf_counter() - t1
            passages += len(ids)
            documents += len(np.unique(docs_of(ids, PASSAGE_BITS)))

    with store.read() as snap:
        position = _position(snap, snap.max_seq())
        # A page of texts at a time: memory holds the vectors, not the store's texts.
        for batch in snap.iter_docs(batch=TEXT_PAGE, max_bytes=TEXT_PAGE_BYTES):
            part = report.vectors_for(store, encoder, splitter, batch)
            parts.append(part)
            held += len(part[0])
            if held >= chunk:
                flush()
    flush()
    report.stages["read"] = time.perf_counter() - t0 - report.stages.get("embed", 0.0) - index_seconds
    t1 = time.perf_counter()
    manifest = Manifest(generation=generation, model_key=encoder.model_key, dim=encoder.dim, index_type=opts.index_type,
                        segments=tuple(segments), created_at=time.time(), lineage=uuid.uuid4().hex,
                        passage_bits=PASSAGE_BITS, splitter=splitter.key(encoder), **position)
    version = index_store.commit(manifest)
    report.stages["index"] = time.perf_counter() - t1 + index_seconds
    report.changes = report.added = documents
    report.finish(index_store, version, written, t0)
    log.info("full build: %d documents, %d passages in %d segments, %d embedded, generation %s", report.added,
             passages, len(segments), report.embedded, report.version)
    return report


def incremental(store: Store, index_store: IndexStore, encoder: Encoder, base: IndexVersion, opts: BuildOptions, *,
                max_changes: int | None = None,
                calibration: Callable[[], Calibration | None] | None = None) -> SyncReport:
    """Apply the change log after ``base``'s sequence as one new segment plus tombstones.

    ``max_changes`` bounds the change-log entries applied in one generation (the worker
    publishes a large backlog in several steps, so searches see progress early).
    """
    t0 = time.perf_counter()
    written = index_store.bytes_written
    m = base.manifest
    splitter = Splitter.of(opts, encoder)
    if m.splitter != splitter.key(encoder) or m.passage_bits != PASSAGE_BITS:
        # Documents split another way (or not at all, before passages): rebuild from the
        # stored vectors; only passages never embedded are embedded.
        log.warning("the index splits documents as %r, the settings ask for %r: rebuilding it",
                    m.splitter or "one row per document", splitter.key(encoder))
        return full_build(store, index_store, encoder, opts)
    report = SyncReport(last_seq=m.last_seq, version=m.version, segments=len(m.segments))
    with store.read() as snap:
        last_seq = snap.max_seq()
        if max_changes is not None and last_seq - m.last_seq > max_changes:
            last_seq = snap.nth_change_after(m.last_seq, max_changes) or last_seq
        if last_seq <= m.last_seq:
            report.seconds = time.perf_counter() - t0
            return report
        oldest = snap.oldest_seq()
        pruned_past = oldest is not None and oldest > m.last_seq + 1
        if not pruned_past:
            position = _position(snap, last_seq)
            changed = snap.changed_ids(m.last_seq, last_seq)
            present: set[int] = set()
            parts: list[tuple[np.ndarray, np.ndarray]] = []
            # A page of texts at a time: a large backlog (an ingest of a big file) holds
            # its vectors, not its texts.
            start, size = 0, FIRST_PAGE
            while start < len(changed):
                docs = snap.documents(changed[start : start + size])
                start += size
                present.update(docs)
                rows = [(d.id, d.text, d.content_hash) for d in docs.values()]
                parts.append(report.vectors_for(store, encoder, splitter, rows))
                if rows:
                    size = page_size(sum(len(r[1]) for r in rows) / len(rows), TEXT_PAGE, TEXT_PAGE_BYTES)
                del docs, rows
    if pruned_past:
        # The change log was pruned past this index's position (by another replica's
        # compaction, say): what changed in between is unknown. Rebuild from the stored
        # vectors (nothing is re-embedded) rather than miss a change.
        log.warning("the change log starts at %d, after this index's position %d: rebuilding from the stored vectors",
                    oldest, m.last_seq)
        return full_build(store, index_store, encoder, opts)
    ids, matrix = _joined(parts, encoder.dim)
    report.stages["read"] = time.perf_counter() - t0 - report.stages.get("embed", 0.0)
    t1 = time.perf_counter()
    generation = index_store.next_generation()
    changed_arr = np.unique(np.asarray(changed, dtype=np.int64))
    segments: list[SegmentMeta] = []
    was_indexed: list[int] = []
    for view in base.views:
        hit = view.segment.rows_of_documents(changed_arr, m.passage_bits)  # every passage of theirs
        hit = hit[~view.dead[hit]]
        meta = view.meta
        if len(hit):
            was_indexed.extend(int(i) for i in np.unique(docs_of(view.segment.ids[hit], m.passage_bits)))
            dead = view.dead.copy()
            dead[hit] = True
            if int(dead.sum()) == meta.rows:
                continue  # nothing left alive: drop the segment, no tombstone file needed
            meta = index_store.with_dead(meta, dead, generation)
        segments.append(meta)
    if len(ids):
        # A batch large enough to be approximate is checked on the store's real queries.
        queries = calibration() if calibration is not None and opts.kind_for(len(ids)) != "flat" else None
        segments.append(index_store.write_segment(ids, matrix, opts=opts, origin="sync", generation=generation,
                                                  calibration=queries))
    manifest = m.successor(generation, index_type=opts.index_type, segments=tuple(segments), **position)
    version = index_store.commit(manifest)
    report.stages["index"] = time.perf_counter() - t1
    report.changes = len(changed)
    report.removed = sum(1 for i in was_indexed if i not in present)
    report.added = len(present)
    report.finish(index_store, version, written, t0)
    log.info("sync: %d changes, %d embedded, generation %s, %d segments, %d bytes written",
             report.changes, report.embedded, report.version, report.segments, report.bytes_written)
    return report


def convert_legacy(index_store: IndexStore, name: str, opts: BuildOptions) -> IndexVersion:
    """Turn a single-file (format 1) version into one exact segment, without re-embedding.

    The merge policy later rebuilds it as HNSW when ``index_type`` wants that for its size.
    """
    meta, ids, vectors = read_legacy(index_store.root, name)
    generation = index_store.next_generation()
    segments = (index_store.write_segment(ids, vectors, opts=opts, origin="convert", generation=generation, kind="flat"),
                ) if len(ids) else ()
    manifest = Manifest(generation=generation, model_key=str(meta["model_key"]), dim=int(meta["dim"]),
                        index_type=opts.index_type, last_seq=int(meta["last_seq"]), segments=segments,
                        created_at=time.time(), lineage=uuid.uuid4().hex)
    version = index_store.commit(manifest)
    log.warning("converted index version %s (single-file format, %d vectors) into segments at %s; nothing was re-embedded",
                name, len(ids), manifest.version)
    return version
