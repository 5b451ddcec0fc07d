"""Retriever: the one object that coordinates store, encoder and index.

The CLI, the Python API and the HTTP service all call these methods; none of them talks
to the store, the index or the sync directly. The library reports through ``logging``
(logger ``retrieval``): warnings such as a rebuilt index reach a user's stderr through
the CLI's handler, or Python's default one.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.config import Settings, load_settings
from retrieval.documents import Document, check_batch, check_ids
from retrieval.embed.base import Encoder
from retrieval.embed.spec import EncoderSpec
from retrieval.errors import (
    ArgumentError,
    IndexCorruptError,
    IndexDivergedError,
    IndexWriteError,
    InvalidInputError,
    ModelMismatchError,
    NotFoundError,
    RetrievalError,
)
from retrieval.executors import EmbedPool, LocalPool, check_executor
from retrieval.filters import Filter
from retrieval.filters import parse as parse_filter
from retrieval.index.build import BuildOptions
from retrieval.index.legacy import LegacyIndexFound
from retrieval.index.policy import MergePolicy
from retrieval.index.segment import IndexVersion
from retrieval.index.store import MERGE_LOCK, SYNC_LOCK, IndexStore
from retrieval.search import pipeline
from retrieval.search.hits import Hit
from retrieval.store import db
from retrieval.store.keyword import rebuild_keyword_index
from retrieval.store.records import NewDocument, content_hash
from retrieval.store.repository import Store
from retrieval.sync.merge import MergeReport, merge
from retrieval.sync.replay import SyncReport, convert_legacy, follows, full_build, incremental
from retrieval.sync.vectors import EMBED_CHUNK, BulkEmbedReport, embed_missing, embed_stored, ensure_vectors

log = logging.getLogger("retrieval")


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0  # reading, storing, embedding and indexing; not the export below
    # One-time preparation of the encoder that this ingest paid for (an ONNX export on
    # first use), reported apart so that the rate means what it says.
    setup_seconds: float = 0.0
    sync: SyncReport | None = None
    embed: BulkEmbedReport | None = None  # the bulk embedding on an executor (ray) before the sync

    @property
    def total(self) -> int:
        return self.added + self.updated + self.unchanged

    @property
    def docs_per_second(self) -> float:
        return self.total / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "invalid": self.invalid,
            "seconds": round(self.seconds, 3),
            "docs_per_second": round(self.docs_per_second, 1),
            "setup_seconds": round(self.setup_seconds, 3),
            "embedded": (self.sync.embedded if self.sync else 0) + (self.embed.embedded if self.embed else 0),
            **({"embed": self.embed.as_dict()} if self.embed else {}),
        }


@dataclass
class VerifyReport:
    ok: bool
    documents: int
    indexed: int
    pending: int
    problems: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def build_options(settings: Settings, *, threads: int | None = None) -> BuildOptions:
    """How this store builds segments, from its settings."""
    return BuildOptions(index_type=settings.index_type, hnsw_min_docs=settings.hnsw_min_docs, hnsw_m=settings.hnsw_m,
                        ef_construction=settings.hnsw_ef_construction, ef_search=settings.hnsw_ef_search,
                        min_recall=settings.min_recall, threads=threads)


def merge_policy(settings: Settings) -> MergePolicy:
    return MergePolicy(segments_per_tier=settings.merge_segments_per_tier, max_merge_at_once=settings.merge_max_at_once,
                       floor_docs=settings.merge_floor_docs, max_tombstones=settings.merge_max_tombstones)


class Retriever:
    """Semantic search over documents stored in a database.

    >>> r = Retriever.from_settings(load_settings())        # doctest: +SKIP
    >>> r.ingest([{"id": "a", "text": "running shoes"}])    # doctest: +SKIP
    >>> r.search("shoes for jogging", k=1)[0].id            # doctest: +SKIP
    'a'
    """

    def __init__(self, settings: Settings, store: Store, index_store: IndexStore, encoder: Encoder | None = None) -> None:
        self.settings = settings
        self.store = store
        self.index_store = index_store
        self._encoder = encoder
        self._loaded: IndexVersion | None = None
        self._loaded_name: str | None = None
        self._lock = threading.RLock()

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Retriever:
        """Open the configured store (migrating it) and index folder; the model loads lazily."""
        settings = settings or load_settings(overrides=overrides)
        if overrides and settings is not None:
            settings = settings.with_overrides("argument", **overrides)
        store = Store.open(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
        index_store = IndexStore(settings.index_dir, keep=settings.keep_index_versions, hnsw_ef_search=settings.hnsw_ef_search)
        return cls(settings, store, index_store)

    @classmethod
    def open(cls, path: str | Path, model: str | None = None, **overrides: Any) -> Retriever:
        """A store in folder ``path`` (``retrieval.db`` and ``index/`` inside it)."""
        folder = Path(path)
        values: dict[str, Any] = {"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index")}
        if model:
            values["model"] = model
        values.update(overrides)
        return cls.from_settings(load_settings(overrides=values))

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            from retrieval.embed import encoder_for

            # ``auto`` prefers a setting whose vectors match the current index's.
            self._encoder = encoder_for(self.settings, prefer_key=self.index_store.model_key())
        return self._encoder

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the index --------------------------------------------------------------------

    def _sync_lock(self) -> Any:
        """The lock every publisher of this index folder holds (a file lock in it)."""
        return _folder_lock(Path(self.settings.index_dir), SYNC_LOCK)

    @property
    def replica_name(self) -> str:
        """This index folder's name among the replicas following the database."""
        import socket

        return self.settings.replica_name or f"{socket.gethostname()}:{Path(self.settings.index_dir).resolve()}"

    def merge_lock(self) -> Any:
        """The lock a merge holds from reading its inputs to its manifest switch: one merge
        at a time per store, and garbage collection leaves the segment it is writing alone."""
        return _folder_lock(Path(self.settings.index_dir), MERGE_LOCK)

    def _load(self) -> IndexVersion | None:
        """The current generation, converting a single-file index (format 1) on first sight."""
        try:
            return self.index_store.load()
        except LegacyIndexFound:
            with self._sync_lock():
                try:
                    return self.index_store.load()
                except LegacyIndexFound as legacy:
                    return convert_legacy(self.index_store, legacy.name, build_options(self.settings))

    def current_index(self) -> IndexVersion:
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
                version = None
                self._rebuild()
                version = self._load()
            if version is None:
                if self._has_documents():
                    log.warning("no index in %s; building it from the stored embeddings", self.settings.index_dir)
                self._rebuild()
                version = self._load()
            assert version is not None
            self._loaded, self._loaded_name = version, version.manifest.filename
            if (self._encoder is not None and self._encoder.model_key != version.manifest.model_key
                    and "auto" in (self.settings.backend, self.settings.precision)):
                # Another process reindexed with other vectors (say bf16): with ``auto``,
                # follow the index instead of failing every search until a restart.
                self._encoder = None
            return version

    def _has_documents(self) -> bool:
        return self.store.count_documents() > 0

    def _rebuild(self) -> SyncReport:
        with self._sync_lock():
            # Another process may have rebuilt it while we waited for the lock.
            try:
                if self._load() is not None:
                    return SyncReport()
            except IndexCorruptError:
                pass
            return full_build(self.store, self.index_store, self.encoder, build_options(self.settings))

    def _check_model(self, version: IndexVersion) -> None:
        if version.manifest.model_key != self.encoder.model_key:
            raise ModelMismatchError(
                f"the index was built with {version.manifest.model_key} but the configured model is "
                f"{self.encoder.model_key}; run `retrieve reindex` to re-embed with the configured model"
            )

    # -- writes -----------------------------------------------------------------------

    def ingest(self, documents: Iterable[Any], *, sync: bool = True, embed_first: bool = False,
               executor: str | None = None, address: str | None = None, skip_invalid: bool = False) -> IngestReport:
        """Upsert documents and sync: dicts with ``id``, ``text`` and optional ``metadata``
        (or :class:`~retrieval.documents.Document` objects).

        Every document is checked first, by the rules the CLI and the HTTP service apply
        too (:mod:`retrieval.documents`: ids, non-empty text within
        ``max_document_bytes``, metadata that JSON can hold, no NaN); any invalid one
        raises :class:`~retrieval.errors.InvalidInputError` listing them all, and nothing
        is written, unless ``skip_invalid`` (then the valid ones are stored and the report
        lists the rest). A bare string or dict instead of a list is a :class:`TypeError`.

        A document whose text did not change is not re-embedded. With ``embed_first``,
        texts without a stored vector are embedded before the documents are written:
        between a write's commit and its sync, searches score the new documents exactly
        and would otherwise embed them on the search path (the HTTP service does this).
        Vectors of a write that then fails are unused embeddings, which `retrieve
        compact` removes.

        With ``executor`` ``ray`` (default: the ``executor`` setting), the documents are
        stored first, then every text without a vector is embedded on the Ray cluster at
        ``address`` (see :meth:`embed`), even with ``sync`` off; the sync then publishes
        them from their stored vectors.
        """
        t0 = time.perf_counter()
        checked, invalid = check_batch(documents, max_bytes=self.settings.max_document_bytes)
        problems = [str(p) for p in invalid]
        if problems and not skip_invalid:
            raise InvalidInputError(problems, len(checked) + len(problems), noun="documents",
                                    hint="pass skip_invalid=True to store the valid ones")
        docs = [NewDocument(c.external_id, c.text, c.metadata) for c in checked]
        if embed_first and docs:
            self._before_write(sync, executor)
            embed_missing(self.store, self.encoder, {content_hash(d.text): d.text for d in docs})
        report = self._write([docs], sync=sync, executor=executor, address=address, t0=t0)
        report.invalid, report.problems = len(problems), problems
        return report

    def ingest_files(
        self,
        sources: Sequence[str],
        *,
        fmt: str | None = None,
        id_field: str = "id",
        text_fields: Sequence[str] = ("text",),
        metadata_fields: Sequence[str] | None = None,
        skip_invalid: bool = False,
        stdin: Any = None,
        sync: bool = True,
        executor: str | None = None,
        address: str | None = None,
        csv_types: Sequence[str] = ("infer",),
    ) -> IngestReport:
        """Validate every record of every file first; write only when all are valid
        (or, with ``skip_invalid``, the valid ones).

        The files are read twice, a record at a time (:class:`~retrieval.readers.RecordScan`):
        once to validate everything, once to store it in batches within one transaction,
        so memory follows a batch, not the files. ``csv_types``: how CSV cells become
        metadata (``infer``: numbers written as numbers are numbers; ``text``; or
        ``COLUMN:TYPE``)."""
        from retrieval.readers import RecordScan

        t0 = time.perf_counter()
        try:
            scan = RecordScan(sources, fmt=fmt, id_field=id_field, text_fields=text_fields,
                              metadata_fields=metadata_fields, stdin=stdin, max_bytes=self.settings.max_document_bytes,
                              csv_types=csv_types)
        except (OSError, ValueError) as exc:
            raise RetrievalError(_file_error(exc)) from exc
        with scan:
            try:
                problems = [str(p) for p in scan.check()]
            except (OSError, ValueError) as exc:
                raise RetrievalError(_file_error(exc)) from exc
            if problems and not skip_invalid:
                raise InvalidInputError(problems, scan.valid + len(problems))
            batches = ([NewDocument(r.external_id, r.text, r.metadata) for r in batch] for batch in scan.batches())
            try:
                report = self._write(batches, sync=sync, executor=executor, address=address, t0=t0)
            except (OSError, ValueError) as exc:  # a file changed between the two reads: nothing was written
                raise RetrievalError(_file_error(exc)) from exc
        report.invalid = len(problems)
        report.problems = problems
        report.seconds = time.perf_counter() - t0 - report.setup_seconds
        return report

    def _before_write(self, sync: bool, executor: str | None) -> bool:
        """Everything that can refuse a write, checked before anything is written: the
        index's model, the index folder's lock, the executor. True for a remote executor."""
        if sync:
            self._check_writable()
            self._sync_lock()  # an index folder this user cannot write is refused now, not after the commit
        return check_executor(executor or self.settings.executor) != "local"

    def _write(self, batches: Iterable[list[NewDocument]], *, sync: bool, executor: str | None, address: str | None,
               t0: float) -> IngestReport:
        remote = self._before_write(sync, executor)
        counts = self.store.upsert_batches(batches)
        report = IngestReport(added=counts.added, updated=counts.updated, unchanged=counts.unchanged)
        if remote:
            report.embed = self.embed(executor=executor, address=address)
        # A backlog left by an earlier run that stored its documents but did not get to
        # publish them (killed, or it lost the database) is published now too.
        if sync and (counts.added or counts.updated or self.lag()["pending_changes"]):
            try:
                report.sync = self.sync()
            except RetrievalError as exc:
                if not (counts.added or counts.updated):
                    raise
                raise IndexWriteError(
                    f"stored {counts.added} new and {counts.updated} updated documents in the database, but could not "
                    f"publish them to the index: {exc}. Searches find them already (scored exactly until they are "
                    "published); `retrieve sync`, or a running worker, publishes them") from exc
        if self._encoder is not None:
            report.setup_seconds = self._encoder.setup_since(t0)
        report.seconds = time.perf_counter() - t0 - report.setup_seconds
        return report

    def embed(self, *, executor: str | None = None, address: str | None = None, actors: int | None = None,
              commit_every: int = EMBED_CHUNK, progress: bool | None = None,
              runtime_env: dict[str, Any] | None = None) -> BulkEmbedReport:
        """Embed every stored document that has no vector for the configured model.

        ``executor`` (default: the setting) ``local`` embeds in this process; ``ray``
        embeds on the Ray cluster at ``address`` (default: the ``ray_address`` setting;
        None starts a local cluster), with ``actors`` actors (default: ``ray_actors``)
        of ``ray_threads`` CPUs each, every one building the encoder this process pins
        (backend and precision as chosen here). ``runtime_env`` is passed to the actors.
        Vectors are committed every ``commit_every`` texts; a run killed at any point
        and run again embeds only what has no stored vector. The index is not touched:
        the next sync publishes the documents from the stored vectors.
        """
        s = self.settings
        name = check_executor(executor or s.executor)
        self._check_writable()
        encoder = self.encoder
        report = BulkEmbedReport(model_key=encoder.model_key, executor=name)
        with self.store.read() as snap:
            if not snap.docs_without_vectors(encoder.model_key, 0, 1):
                return report  # nothing to do (one indexed probe, not a count): no cluster is started
        t0 = time.perf_counter()
        pool: EmbedPool
        if name == "local":
            pool = LocalPool(encoder)
        else:
            from retrieval.executors.ray_pool import RayPool

            spec = EncoderSpec.pinned(encoder, s.model, threads=s.ray_threads, device=s.device)
            pool = RayPool(spec, address=address or s.ray_address, actors=actors or s.ray_actors,
                           runtime_env=runtime_env)
        report.startup_seconds = time.perf_counter() - t0
        with pool:
            embed_stored(self.store, pool, commit_every=commit_every, report=report,
                         progress=s.progress if progress is None else progress)
        return report

    def _check_writable(self) -> None:
        manifest = self.index_store.read_manifest()
        if manifest is not None and manifest.model_key != self.encoder.model_key:
            raise ModelMismatchError(
                f"the index was built with {manifest.model_key} but the configured model is "
                f"{self.encoder.model_key}; run `retrieve reindex` first (or set the model back)"
            )

    def delete(self, external_ids: Sequence[str], *, sync: bool = True) -> tuple[int, list[str]]:
        """Delete documents by id; returns (deleted, ids that did not exist). ``external_ids``
        is a sequence (a bare string is a :class:`TypeError`: ``delete("12")`` would
        otherwise delete "1" and "2")."""
        ids = check_ids(external_ids)
        if sync:
            self._sync_lock()  # an index folder this user cannot write is refused before the delete
        deleted, missing = self.store.delete(ids)
        if sync and deleted:
            try:
                self.sync()
            except RetrievalError as exc:
                raise IndexWriteError(
                    f"deleted {deleted} documents from the database, but could not publish that to the index: {exc}. "
                    "Searches no longer return them; `retrieve sync`, or a running worker, publishes it") from exc
        return deleted, missing

    def get(self, external_id: str) -> Document:
        """The stored document with this id (:class:`~retrieval.documents.Document`)."""
        (key,) = check_ids([external_id], "id")
        doc = self.store.get(key)
        if doc is None:
            raise NotFoundError(f"no document with id {key!r}")
        return Document(doc.external_id, doc.text, doc.metadata)

    def sync(self, *, max_changes: int | None = None, inline_merges: bool = True) -> SyncReport:
        """Apply pending changes to the index as a new segment and publish a new generation.

        ``max_changes`` bounds the change-log entries applied in this generation. Merges
        of at most ``merge_inline_max_docs`` live rows then run inline (unless
        ``inline_merges`` is off: the worker runs them in the background instead).
        """
        opts = build_options(self.settings)
        with self._sync_lock():
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
                    self._forget(base)
                    base = None
            if base is None:
                report = full_build(self.store, self.index_store, self.encoder, opts)
            else:
                self._check_model(base)
                report = incremental(self.store, self.index_store, self.encoder, base, opts, max_changes=max_changes)
            self._adopt(report)
        if inline_merges and self.settings.merge_inline_max_docs and report.published is not None:
            for done in self.merge(max_docs=self.settings.merge_inline_max_docs, wait=False):
                report.merges.append(done.as_dict())
                report.segments = done.segments_after
        return report

    def pending_merges(self) -> list[Any]:
        """The merges the policy asks for now (reads one manifest)."""
        return plan_merges_for(self.index_store.read_manifest(), self.settings)

    def merge(self, *, max_docs: int | None = None, wait: bool = True, threads: int | None = None,
              stop: Any = None, progress: Any = None) -> list[MergeReport]:
        """Run the merges the policy asks for, one after another, until none is left.

        ``max_docs`` skips merges of more live rows (inline merges stay cheap); ``wait``
        waits for a merge another process runs instead of returning; ``threads`` bounds the
        FAISS threads a build uses; ``stop`` (an Event) ends the loop between merges.
        Searches go on throughout; syncs wait only for each manifest switch.
        """
        from filelock import Timeout

        lock = self.merge_lock()
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return []
        done: list[MergeReport] = []
        opts = build_options(self.settings, threads=threads)
        try:
            while stop is None or not stop.is_set():
                version = self._load()
                manifest = version.manifest if version is not None else None
                plans = [p for p in plan_merges_for(manifest, self.settings) if max_docs is None or p.live <= max_docs]
                if not plans:
                    break
                report = merge(self.index_store, plans[0], opts, self._sync_lock, progress=progress)
                current = self.index_store.read_manifest()
                report.segments_after = len(current.segments) if current else 0
                done.append(report)
                if report.abandoned:
                    log.info("merge abandoned: %s", report.abandoned)
                    break
        finally:
            lock.release()
        return done

    def _adopt(self, report: SyncReport) -> None:
        """Serve the version this process just published without reading it back from disk,
        unless another process has published a newer one meanwhile."""
        version = report.published
        if version is not None and version.manifest.model_key == self.encoder.model_key:
            with self._lock:
                if self.index_store.current_name() == version.manifest.filename:
                    self._loaded, self._loaded_name = version, version.manifest.filename

    def reindex(self, model: str | None = None) -> SyncReport:
        """Rebuild the index from stored vectors (re-embedding nothing that is stored).

        With ``model``, every document is embedded with that model into a new index; the
        old index keeps serving until the new one is published.
        """
        encoder = self.encoder
        if model is not None:
            from retrieval.embed import encoder_for

            encoder = encoder_for(self.settings, model=model)
        with self.store.write() as conn:  # derived data too: rebuilt from the documents
            rebuild_keyword_index(conn)
        with self._sync_lock():
            report = full_build(self.store, self.index_store, encoder, build_options(self.settings))
        self._adopt(report)
        return report

    # -- search -----------------------------------------------------------------------

    def _check_query(self, query: str) -> None:
        if not isinstance(query, str):
            raise ArgumentError(f"a query is a string, got {type(query).__name__}")
        if not query.strip():
            raise ArgumentError("the query is empty")
        if len(query) > self.settings.max_query_chars:
            raise ArgumentError(
                f"the query has {len(query)} characters; the limit is {self.settings.max_query_chars} (max_query_chars)"
            )

    def _check_k(self, k: Any) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.settings.max_k:
            raise ArgumentError(f"k must be between 1 and {self.settings.max_k} (max_k), got {k!r}")

    def _search_args(self, queries: Sequence[str], k: int | None,
                     min_score: float | None) -> tuple[int, float | None, IndexVersion]:
        """Defaults filled in, every query checked, and the index version to search."""
        k = self.settings.search_k if k is None else k
        self._check_k(k)
        min_score = self.settings.min_score if min_score is None else min_score
        for q in queries:
            self._check_query(q)
        return k, min_score, self.current_index()

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               where: Any = None, mode: str = "dense", alpha: float | None = None,
               plus: Sequence[str] = (), minus: Sequence[str] = (), like: Sequence[str] = (),
               unlike: Sequence[str] = (), include_examples: bool = False) -> list[Hit]:
        """The top-``k`` documents for ``query``, best first.

        ``mode``: ``dense`` (cosine similarity, the default), ``keyword`` (BM25 over
        SQLite's FTS5 index, ts_rank_cd over PostgreSQL's tsvector) or ``hybrid``
        (reciprocal rank fusion of both; with ``alpha``, a convex combination of their
        normalised scores, ``alpha`` weighing the dense one).
        ``where`` is a metadata filter (:mod:`retrieval.filters`); the result has
        min(k, matching documents) hits.

        Vector arithmetic (dense mode): the query vector is the normalised sum of the
        vectors of ``query``, the ``plus`` texts and the stored ``like`` documents (by
        external id), less those of the ``minus`` texts and ``unlike`` documents. The
        example documents are left out of the results unless ``include_examples``.
        """
        plus, minus = _strings(plus, "plus"), _strings(minus, "minus")
        like, unlike = check_ids(like, "like"), check_ids(unlike, "unlike")
        arithmetic = bool(plus or minus or like or unlike)
        if arithmetic and mode != "dense":
            raise ArgumentError("--plus, --minus, --like and --unlike work in dense mode only")
        if query is None and not arithmetic:
            raise ArgumentError("the query is empty")
        positive = [*([query] if query is not None else []), *plus]
        texts, k, min_score, f = self._prepare([*positive, *minus], k, min_score, mode, alpha, where)
        if not arithmetic:
            return self._run(texts, k, min_score, f, mode, alpha)[0]
        version = self.current_index()
        self._check_model(version)
        vector, exclude = self._arithmetic(texts[: len(positive)], texts[len(positive):], like, unlike)
        req = pipeline.Request(k, vectors=vector, where=f, min_score=min_score,
                               exclude=() if include_examples else exclude)
        return self._pipeline(version, req)[0]

    def _prepare(self, texts: Sequence[str], k: int | None, min_score: float | None, mode: str,
                 alpha: float | None, where: Any) -> tuple[list[str], int, float | None, Filter | None]:
        """A search's arguments checked (the one place: the CLI, HTTP and Python all come
        here), with the settings' defaults: the query texts (lone surrogates replaced), k,
        min_score and the parsed filter. Every refusal is an :class:`ArgumentError`."""
        pipeline.check_mode(mode, alpha)
        f = parse_filter(where)
        k = self.settings.search_k if k is None else k
        self._check_k(k)
        if min_score is not None and (isinstance(min_score, bool) or not isinstance(min_score, (int, float))
                                      or math.isnan(min_score)):
            raise ArgumentError(f"min_score must be a number, got {min_score!r}")
        # The min_score setting is a cosine: it applies to dense searches; a min_score
        # given with a search applies to that mode's score.
        if min_score is None and mode == "dense":
            min_score = self.settings.min_score
        texts = [_text(t) for t in texts]
        for t in texts:
            self._check_query(t)
        return texts, k, min_score, f

    def similar(self, external_id: str, k: int | None = None, *, where: Any = None,
                min_score: float | None = None) -> list[Hit]:
        """The documents nearest to a stored document, from its stored vector (nothing is
        re-embedded when it has one), itself left out."""
        return self.search(None, k, where=where, min_score=min_score, like=[external_id])

    def _arithmetic(self, positive: Sequence[str], negative: Sequence[str], like: Sequence[str],
                    unlike: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """The normalised query vector of a recommendation, and the examples' internal ids."""
        texts = [*positive, *negative]
        encoded = self.encoder.encode_queries(texts) if texts else np.empty((0, self.encoder.dim), np.float32)
        total = encoded[: len(positive)].sum(axis=0) - encoded[len(positive):].sum(axis=0)
        examples: list[int] = []
        if like or unlike:
            docs = self.store.get_many([*like, *unlike])
            missing = [e for e in (*like, *unlike) if e not in docs]
            if missing:
                raise NotFoundError(f"no document with id {missing[0]!r}")
            rows = [(d.id, d.text, d.content_hash) for d in docs.values()]
            ids, matrix = ensure_vectors(self.store, self.encoder, rows)
            by_id = dict(zip(ids.tolist(), matrix))
            for e in like:
                total = total + by_id[docs[e].id]
            for e in unlike:
                total = total - by_id[docs[e].id]
            examples = [docs[e].id for e in (*like, *unlike)]
        norm = float(np.linalg.norm(total))
        if not np.isfinite(norm) or norm < 1e-6:
            raise ArgumentError("the positive and negative examples cancel out: there is no direction to search")
        return np.asarray(total / norm, dtype=np.float32).reshape(1, -1), examples

    def _pipeline(self, version: IndexVersion | None, req: pipeline.Request) -> list[list[Hit]]:
        def run(v: IndexVersion | None) -> list[list[Hit]]:
            # A search's statements stop at its deadline, whatever the query and the store.
            with db.deadline(self.settings.search_timeout_ms / 1000):
                return pipeline.run(self.store, v, lambda: self.encoder, req, ef_search=self.settings.hnsw_ef_search,
                                    threads=self.settings.search_threads, exact_rows=self.settings.filter_exact_rows)

        try:
            return run(version)
        except IndexDivergedError as exc:
            if version is None:
                raise
            return run(self._rebuild_diverged(version, str(exc)))

    def _rebuild_diverged(self, stale: IndexVersion, reason: str) -> IndexVersion:
        """Replace an index that follows another history than the database's (a search
        found out) by one built from the stored vectors, unless another process did."""
        try:
            lock = self._sync_lock()
        except IndexWriteError as exc:
            raise IndexDivergedError(f"{reason}; the index must be rebuilt, and this user cannot write its folder: "
                                     "run `retrieve sync` as one who can") from exc
        with lock:
            current = self._load()
            if current is not None and current.manifest.filename != stale.manifest.filename:
                with self.store.read() as snap:
                    if follows(snap, current.manifest) is None:
                        with self._lock:
                            self._loaded, self._loaded_name = current, current.manifest.filename
                        return current
            log.warning("%s; rebuilding the index from the stored embeddings (nothing is re-embedded)", reason)
            self._forget(stale)
            report = full_build(self.store, self.index_store, self.encoder, build_options(self.settings))
            self._adopt(report)
        assert report.published is not None
        return report.published

    def _forget(self, stale: IndexVersion) -> None:
        """After the database moved backwards: new documents and changes get ids above any
        the stale index held, and no cached filter match of the old history is used."""
        self.store.matches.clear()
        top = max((int(v.segment.ids[-1]) for v in stale.views if len(v.segment.ids)), default=0)
        try:
            self.store.never_reuse(top, stale.manifest.last_seq)
        except RetrievalError as exc:  # a read-only database: the rebuild still serves the truth
            log.warning("could not move the database's id counters past the old index's (%s)", exc)

    def _run(self, queries: Sequence[str], k: int, min_score: float | None, where: Filter | None, mode: str,
             alpha: float | None, snippets: bool = True) -> list[list[Hit]]:
        if mode == "keyword":
            return self._pipeline(None, pipeline.Request(k, texts=list(queries), mode=mode, where=where,
                                                         min_score=min_score, snippets=snippets))
        version = self.current_index()
        self._check_model(version)
        vectors = self.encoder.encode_queries(list(queries)) if queries else np.empty((0, version.manifest.dim), np.float32)
        req = pipeline.Request(k, vectors=vectors, texts=list(queries), mode=mode, where=where, min_score=min_score,
                               alpha=alpha, snippets=snippets)
        return self._pipeline(version, req)

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None,
                    where: Any = None, mode: str = "dense", alpha: float | None = None,
                    snippets: bool = True) -> list[list[Hit]]:
        """Search several queries at once (encoded in batches). ``snippets=False`` leaves
        out keyword and hybrid snippets (each costs a lookup in the keyword index)."""
        texts, k, min_score, f = self._prepare(_strings(queries, "queries"), k, min_score, mode, alpha, where)
        return self._run(texts, k, min_score, f, mode, alpha, snippets)

    def search_encoded(self, query: str, vector: np.ndarray, model_key: str, k: int | None = None, *,
                       min_score: float | None = None, where: Any = None) -> list[Hit] | None:
        """:meth:`search` with the query already encoded (by :mod:`retrieval.prefetch`).

        None when ``model_key`` is not the current index's: the caller searches normally.
        """
        k, min_score, version = self._search_args([query], k, min_score)
        if version.manifest.model_key != model_key or vector.shape != (1, version.manifest.dim):
            return None
        return self.search_vectors(vector, k, min_score=min_score, version=version, where=where)[0]

    def search_vectors(
        self, vectors: np.ndarray, k: int, *, min_score: float | None = None, version: IndexVersion | None = None,
        where: Any = None,
    ) -> list[list[Hit]]:
        """Search with query vectors, consistent with the database at this moment.

        Documents changed since the index version was published are left out of the
        FAISS search and scored exactly from their stored (or freshly computed) vectors,
        so a search never returns a deleted or stale document and sees every committed one
        (see :mod:`retrieval.search.pipeline`).
        """
        version = version or self.current_index()
        return self._pipeline(version, pipeline.Request(k, vectors=vectors, min_score=min_score,
                                                        where=parse_filter(where)))

    # -- inspection -------------------------------------------------------------------

    def lag(self) -> dict[str, Any]:
        """How far the index is behind the database: change-log entries not yet applied,
        the age of the oldest, and the current version (reads one manifest and the log)."""
        manifest = self.index_store.read_manifest()
        pending, oldest = self.store.backlog(manifest.last_seq if manifest else 0)
        diverged = None
        if manifest is not None:
            with self.store.read() as snap:
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

    def index_version(self) -> str | None:
        """The index version searches use now, as status names it (``g0000000042``; reads
        one small file)."""
        name = self.index_store.current_name()
        return name.removesuffix(".json") if name else None

    def vitals(self) -> dict[str, Any]:
        """The figures a monitor polls: :meth:`lag`, documents and the index's size on disk."""
        from retrieval.sync.worker import read_state

        manifest = self.index_store.read_manifest()
        segments = manifest.segments if manifest else ()
        rows = sum(s.rows for s in segments)
        worker = read_state(self) or {}
        last_merge = (manifest.last_merge or {}) if manifest else {}
        return {**self.lag(), "documents": self.store.count_documents(), "index_bytes": self.index_store.disk_usage(),
                "segments": len(segments), "tombstone_fraction": sum(s.dead for s in segments) / rows if rows else 0.0,
                "merging": bool(worker.get("running") and worker.get("merging")),
                "merges_done": int(worker.get("merges_done") or 0), "last_merge_at": last_merge.get("at")}

    def status(self) -> dict[str, Any]:
        """Counts, model, index version and sizes; loads neither the model nor torch."""
        from retrieval.embed import plan_for
        from retrieval.embed.choice import EncoderPlan
        from retrieval.sync.maintenance import reclaimable
        from retrieval.sync.worker import read_states

        try:
            encoder_plan = plan_for(self.settings, prefer_key=self.index_store.model_key())
            model_key = encoder_plan.model_key
        except RetrievalError as exc:
            model_key = f"unavailable ({exc})"
            encoder_plan = EncoderPlan(self.settings.backend, self.settings.precision, model_key, None,
                                       f"{self.settings.backend} {self.settings.precision}")
        stats = self.store.stats(model_key)
        manifest = self.index_store.read_manifest()
        lag = self.lag()
        workers = read_states(self.store)  # every replica's, this one's among them
        return {
            "database": db.describe_url(self.settings.database_url),
            "replica": self.replica_name,
            "index_dir": self.settings.index_dir,
            "documents": stats["documents"],
            "embedded": stats["embedded"],
            "stored_vectors": stats["stored_vectors"],
            "indexed": lag["indexed"],
            "pending_changes": lag["pending_changes"],
            "last_seq": lag["last_seq"],
            "max_seq": stats["max_seq"],
            "model": self.settings.model,
            "model_key": model_key,
            "language_model": encoder_plan.backend != "hash",
            "index_model_key": manifest.model_key if manifest else None,
            "model_matches_index": manifest is None or manifest.model_key == model_key,
            "index_type": manifest.index_type if manifest else self.settings.index_type,
            "index_version": lag["index_version"],
            "segments": [_segment_status(s) for s in manifest.segments] if manifest else [],
            "last_merge": manifest.last_merge if manifest else None,
            "pending_merges": [p.describe() for p in plan_merges_for(manifest, self.settings)],
            "database_bytes": self.store.database_bytes(),
            "index_bytes": self.index_store.disk_usage(),
            "lag_seconds": round(lag["lag_seconds"], 1),
            "diverged": lag["diverged"],
            "worker": next((w for w in workers if w["name"] == self.replica_name), None),
            "workers": workers,
            "reclaimable": reclaimable(self),
            "backend": encoder_plan.backend,  # what runs: torch after a fallback
            "precision": encoder_plan.precision,
            "backend_note": encoder_plan.note,
            "backend_requested": encoder_plan.requested,
        }

    def verify(self) -> VerifyReport:
        """Check that the index agrees exactly with the database, and every segment file
        with its checksum.

        Differences explained by changes not yet synced are reported as pending, not drift.
        """
        problems: list[str] = []
        version = self.current_index()
        m = version.manifest
        for view in version.views:
            try:
                self.index_store.check_segment_file(view.meta)
            except IndexCorruptError as exc:
                problems.append(str(exc))
            if len(view.segment.ids) > 1 and not np.all(np.diff(view.segment.ids) > 0):
                problems.append(f"segment {view.meta.name}: its ids are not strictly ascending")
        index_ids = version.ids
        unique, counts = np.unique(index_ids, return_counts=True)
        for i in unique[counts > 1][:20]:
            problems.append(f"document {int(i)} is live in more than one segment")
        vectors = version.vectors()
        with self.store.read() as snap:
            diverged = follows(snap, m)
            if diverged is not None:
                problems.append(f"the index does not follow this database: {diverged}; the next sync or search "
                                "rebuilds it from the stored vectors")
            max_seq = snap.max_seq()
            pending = set(snap.changed_ids(m.last_seq, max_seq)) if max_seq > m.last_seq else set()
            rows = [r for batch in snap.iter_docs() for r in batch]
            hashes = {doc_id: content_hash(text_) for doc_id, text_, _ in rows}
            stored = snap.embeddings(m.model_key, set(hashes.values()))
            problems.extend(snap.keyword_problems())
            problems.extend(f"document {e!r}: its metadata is not valid JSON (a NaN or infinity stored by an older "
                            "version); filtered searches fail on it: ingest it again with valid metadata"
                            for e in snap.invalid_metadata())
        in_index = {int(i): pos for pos, i in enumerate(index_ids)}
        in_db = set(hashes)
        for i in sorted(set(in_index) - in_db - pending):
            problems.append(f"document {i} is in the index but not in the database")
        for i in sorted(in_db - set(in_index) - pending):
            problems.append(f"document {i} is in the database but not in the index")
        for i in sorted((in_db & set(in_index)) - pending):
            vec = stored.get(hashes[i])
            if vec is None:
                problems.append(f"document {i} has no stored embedding for {m.model_key}")
            elif not np.allclose(vectors[in_index[i]], vec, atol=1e-6):
                problems.append(f"document {i}: the indexed vector is not the embedding of its current text")
        return VerifyReport(ok=not problems, documents=len(in_db), indexed=len(in_index), pending=len(pending), problems=problems)


def _folder_lock(folder: Path, name: str) -> Any:
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


def _file_error(exc: BaseException) -> str:
    """An input file's problem in one line (an OSError's own text names errno and path)."""
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or exc}: no such file" if exc.filename else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _strings(value: Any, what: str) -> list[str]:
    """A sequence of texts as a list; a bare string (which would be read as one-letter
    texts) is a TypeError."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{what} must be a sequence of texts, not a single string; for one, pass [{value!r:.60}]")
    return list(value)


def _text(query: Any) -> Any:
    """A query with lone surrogates (which no encoder or database takes) replaced."""
    if isinstance(query, str) and any("\ud800" <= ch <= "\udfff" for ch in query):
        return query.encode("utf-8", "replace").decode("utf-8")
    return query


def _segment_status(meta: Any) -> dict[str, Any]:
    return {"name": meta.name, "type": meta.kind, "documents": meta.live, "rows": meta.rows,
            "tombstones": round(meta.tombstone_fraction, 4), "recall": meta.recall, "ef_search": meta.ef_search,
            "exact_by_guard": meta.exact_by_guard, "origin": meta.origin, "bytes": meta.faiss.bytes}


def plan_merges_for(manifest: Any, settings: Settings) -> list[Any]:
    """The merges the policy asks for in ``manifest`` (none without one)."""
    if manifest is None:
        return []
    return merge_policy(settings).plan(manifest.segments, build_options(settings))
