"""The index folder as one process keeps it: the generation it serves, and every way a
new one is published (a sync, a merge, a reindex, a rebuild).

:class:`IndexKeeper` reloads the current generation when another process published a
newer one (reading one small file per call), rebuilds the index from the stored vectors
when it is missing, corrupt, or follows another history than the database's, and
serializes publishers of the folder with its sync lock. :class:`EncoderSlot` holds the
encoder, built on first use, with ``auto`` preferring the setting whose vectors the index
holds.
"""

from __future__ import annotations

import functools
import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from retrieval.config import Settings
from retrieval.embed.base import Encoder
from retrieval.errors import IndexCorruptError, IndexDivergedError, IndexWriteError, ModelMismatchError, RetrievalError
from retrieval.index.build import BuildOptions, Calibration
from retrieval.index.legacy import LegacyIndexFound
from retrieval.index.policy import Merge, MergePolicy
from retrieval.index.segment import IndexVersion
from retrieval.index.store import MERGE_LOCK, SYNC_LOCK, IndexStore
from retrieval.store.keyword import rebuild_keyword_index
from retrieval.store.repository import Store
from retrieval.sync.calibration import QueryRecorder, calibration_queries
from retrieval.sync.merge import MergeReport, merge
from retrieval.sync.replay import SyncReport, convert_legacy, follows, full_build, incremental

log = logging.getLogger("retrieval")


def plan_merges_for(manifest: Any, settings: Settings, *, fewest: bool = False) -> list[Merge]:
    """The merges the policy asks for in ``manifest`` (none without one); with ``fewest``,
    those towards the fewest segments the memory cap allows."""
    if manifest is None:
        return []
    policy, opts = MergePolicy.of(settings.index), BuildOptions.of(settings.index)
    if fewest:
        return policy.plan_fewest(manifest.segments, opts, manifest.dim)
    return policy.plan(manifest.segments, opts, manifest.dim)


def folder_lock(folder: Path, name: str) -> Any:
    """A file lock in the index folder; a folder this user cannot write is one line (what
    to do included), not a PermissionError traceback from inside the lock library."""
    from filelock import FileLock

    path = folder / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise IndexWriteError(f"cannot lock the index folder {folder} ({path.name}: {exc.strerror or exc}); "
                              "run this as a user who can write it") from exc
    return FileLock(str(path))


class EncoderSlot:
    """The encoder, built on first use: with ``auto``, the fastest setting whose vectors
    match the index's (``prefer_key``)."""

    def __init__(self, settings: Settings, prefer_key: Callable[[], str | None], encoder: Encoder | None = None) -> None:
        self.settings = settings
        self._prefer_key = prefer_key
        self.loaded = encoder

    def get(self) -> Encoder:
        if self.loaded is None:
            from retrieval.embed import encoder_for

            self.loaded = encoder_for(self.settings, prefer_key=self._prefer_key())
        return self.loaded

    def follow(self, model_key: str) -> None:
        """Another process reindexed with other vectors (say bf16): with ``auto``, follow
        the index instead of failing every search until a restart."""
        if (self.loaded is not None and self.loaded.model_key != model_key and self.loaded.backend != "external"
                and "auto" in (self.settings.encoder.backend, self.settings.encoder.precision)):
            self.loaded = None


class IndexKeeper:
    """Serves and publishes the generations of one index folder (see the module doc)."""

    def __init__(self, settings: Settings, store: Store, index_store: IndexStore, encoder: EncoderSlot) -> None:
        self.settings = settings
        self.store = store
        self.index_store = index_store
        self.encoder = encoder
        self._loaded: IndexVersion | None = None
        self._loaded_name: str | None = None
        self._lock = threading.RLock()
        # The query sample's buffer (the Retriever's): written before a build, which may
        # calibrate the recall guard with the sample.
        self.queries: QueryRecorder | None = None

    # -- locks ----------------------------------------------------------------------

    def sync_lock(self) -> Any:
        """The lock every publisher of this index folder holds (a file lock in it)."""
        return folder_lock(Path(self.settings.store.index_dir), SYNC_LOCK)

    def merge_lock(self) -> Any:
        """The lock a merge holds from reading its inputs to its manifest switch: one merge
        at a time per store, and garbage collection leaves the segment it is writing alone."""
        return folder_lock(Path(self.settings.store.index_dir), MERGE_LOCK)

    @property
    def replica_name(self) -> str:
        """This index folder's name among the replicas following the database."""
        return self.settings.worker.replica_name or f"{socket.gethostname()}:{Path(self.settings.store.index_dir).resolve()}"

    # -- the generation served ------------------------------------------------------

    def _load(self) -> IndexVersion | None:
        """The current generation, converting a single-file index (format 1) on first sight."""
        try:
            return self.index_store.load()
        except LegacyIndexFound:
            with self.sync_lock():
                try:
                    return self.index_store.load()
                except LegacyIndexFound as legacy:
                    return convert_legacy(self.index_store, legacy.name, BuildOptions.of(self.settings.index))

    def current(self) -> IndexVersion:
        """The current index version, reloaded when another process published a newer one,
        and rebuilt from stored vectors when it is missing or corrupt."""
        with self._lock:
            name = self.index_store.current_name()
            if self._loaded is not None and name == self._loaded_name:
                return self._loaded
            try:
                version = self._load()
            except IndexCorruptError as exc:
                log.warning("%s; rebuilding the index from the stored embeddings", exc)
                self._rebuild()
                version = self._load()
            if version is None:
                if self.store.count_documents() > 0:
                    log.warning("no index in %s; building it from the stored embeddings", self.settings.store.index_dir)
                self._rebuild()
                version = self._load()
            assert version is not None
            self._serve(version)
            self.encoder.follow(version.manifest.model_key)
            return version

    def _serve(self, version: IndexVersion) -> None:
        with self._lock:
            self._loaded, self._loaded_name = version, version.manifest.filename

    def _rebuild(self) -> SyncReport:
        with self.sync_lock():
            # Another process may have rebuilt it while we waited for the lock.
            try:
                if self._load() is not None:
                    return SyncReport()
            except IndexCorruptError:
                pass
            return self._full_build(self.encoder.get())

    def check_model(self, version: IndexVersion | None = None) -> None:
        """Refuse an index (``version``, or the current one: one manifest read) built with
        other vectors than the configured encoder's; nothing when there is no index yet."""
        held = version.manifest.model_key if version is not None else self._current_model_key()
        key = self.encoder.get().model_key
        if held is not None and held != key and "external:" in held + key:
            raise ModelMismatchError(
                f"this store holds {held} vectors, not {key}: a store keeps one model's vectors "
                "(the caller's, for an external model), so use another store for these, or the same model as before"
            )
        if held is not None and held != key:
            raise ModelMismatchError(
                f"the index was built with {held} but the configured model is {key}; run "
                "`retrieve reindex` to re-embed with the configured model (or set the model back)"
            )

    def _current_model_key(self) -> str | None:
        """The current generation's model key: the served one's while it is current (one
        small file read), else its manifest's; None without an index."""
        with self._lock:
            if self._loaded is not None and self.index_store.current_name() == self._loaded_name:
                return self._loaded.manifest.model_key
        manifest = self.index_store.read_manifest()
        return manifest.model_key if manifest is not None else None

    def adopt(self, report: SyncReport) -> None:
        """Serve the version this process just published without reading it back from disk,
        unless another process has published a newer one meanwhile."""
        version = report.published
        if version is not None and version.manifest.model_key == self.encoder.get().model_key:
            with self._lock:
                if self.index_store.current_name() == version.manifest.filename:
                    self._serve(version)

    # -- publishing -----------------------------------------------------------------

    def sync(self, *, max_changes: int | None = None, inline_merges: bool = True) -> SyncReport:
        """Apply pending changes to the index as a new segment and publish a new generation
        (see :meth:`retrieval.Retriever.sync`)."""
        opts = BuildOptions.of(self.settings.index)
        self._flush_queries()
        with self.sync_lock():
            try:
                base = self._load()
            except IndexCorruptError as exc:
                log.warning("%s; rebuilding the index from the stored embeddings", exc)
                base = None
            if base is not None:
                with self.store.read() as snap:
                    diverged = follows(snap, base.manifest)
                if diverged is not None:
                    log.warning("%s; rebuilding the index from the stored embeddings (nothing is re-embedded)",
                                diverged)
                    self.forget(base)
                    base = None
            if base is None:
                report = self._full_build(self.encoder.get())
            else:
                self.check_model(base)
                encoder = self.encoder.get()
                report = incremental(self.store, self.index_store, encoder, base, opts,
                                     calibration=functools.partial(self.calibration, encoder.model_key, encoder.dim),
                                     max_changes=max_changes)
            self.adopt(report)
        if inline_merges and self.settings.index.merge_inline_max_docs and report.published is not None:
            for done in self.merge(max_docs=self.settings.index.merge_inline_max_docs, wait=False):
                report.merges.append(done.as_dict())
                report.segments = done.segments_after
        return report

    def pending_merges(self) -> list[Merge]:
        """The merges the policy asks for now (reads one manifest)."""
        return plan_merges_for(self.index_store.read_manifest(), self.settings)

    def merge(self, *, max_docs: int | None = None, wait: bool = True, threads: int | None = None,
              stop: Any = None, progress: Any = None, fewest: bool = False) -> list[MergeReport]:
        """Run the merges the policy asks for, one after another (see :meth:`retrieval.Retriever.merge`)."""
        from filelock import Timeout

        self._flush_queries()
        lock = self.merge_lock()
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return []
        done: list[MergeReport] = []
        opts = BuildOptions.of(self.settings.index, threads=threads)
        try:
            while stop is None or not stop.is_set():
                version = self._load()
                manifest = version.manifest if version is not None else None
                plans = [p for p in plan_merges_for(manifest, self.settings, fewest=fewest)
                         if max_docs is None or p.live <= max_docs]
                if not plans:
                    break
                assert manifest is not None
                report = merge(self.index_store, plans[0], opts, self.sync_lock, progress=progress,
                               calibration=functools.partial(self.calibration, manifest.model_key, manifest.dim))
                current = self.index_store.read_manifest()
                report.segments_after = len(current.segments) if current else 0
                done.append(report)
                if report.abandoned:
                    log.info("merge abandoned: %s", report.abandoned)
                    break
        finally:
            lock.release()
        return done

    def reindex(self, model: str | None = None) -> SyncReport:
        """Rebuild the index from stored vectors (see :meth:`retrieval.Retriever.reindex`)."""
        encoder = self.encoder.get()
        if model is not None:
            from retrieval.embed import encoder_for

            encoder = encoder_for(self.settings, model=model)
        with self.store.write() as conn:  # derived data too: rebuilt from the documents
            rebuild_keyword_index(conn)
        self._flush_queries()
        with self.sync_lock():
            report = self._full_build(encoder)
        self.adopt(report)
        return report

    def _full_build(self, encoder: Encoder) -> SyncReport:
        return full_build(self.store, self.index_store, encoder, BuildOptions.of(self.settings.index),
                          calibration=functools.partial(self.calibration, encoder.model_key, encoder.dim))

    def calibration(self, model_key: str, dim: int) -> Calibration | None:
        """The store's recent real queries for the recall guard, when it has enough."""
        vectors, _label = calibration_queries(self.store, model_key, dim, BuildOptions.of(self.settings.index).recall_queries)
        return Calibration(vectors, "queries") if len(vectors) else None

    def _flush_queries(self) -> None:
        if self.queries is not None:
            self.queries.flush()

    def rebuild_diverged(self, stale: IndexVersion, reason: str) -> IndexVersion:
        """Replace an index that follows another history than the database's (a search
        found out) by one built from the stored vectors, unless another process did."""
        try:
            lock = self.sync_lock()
        except IndexWriteError as exc:
            raise IndexDivergedError(f"{reason}; the index must be rebuilt, and this user cannot write its folder: "
                                     "run `retrieve sync` as one who can") from exc
        with lock:
            current = self._load()
            if current is not None and current.manifest.filename != stale.manifest.filename:
                with self.store.read() as snap:
                    if follows(snap, current.manifest) is None:
                        self._serve(current)
                        return current
            log.warning("%s; rebuilding the index from the stored embeddings (nothing is re-embedded)", reason)
            self.forget(stale)
            report = self._full_build(self.encoder.get())
            self.adopt(report)
        assert report.published is not None
        return report.published

    def forget(self, stale: IndexVersion) -> None:
        """After the database moved backwards: new documents and changes get ids above any
        the stale index held, and no cached filter match of the old history is used."""
        self.store.matches.clear()
        top = max((int(v.segment.ids[-1]) for v in stale.views if len(v.segment.ids)), default=0)
        try:
            self.store.never_reuse(top, stale.manifest.last_seq)
        except RetrievalError as exc:  # a read-only database: the rebuild still serves the truth
            log.warning("could not move the database's id counters past the old index's (%s)", exc)
