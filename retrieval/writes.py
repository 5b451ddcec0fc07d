"""Writes: documents in (ingest from Python or files, streamed), vectors for what is
stored (bulk embedding, here or on a Ray cluster) and deletes; each publishes the index
generation that holds it (a small one from Python or HTTP in the background, see
:mod:`retrieval.sync.publisher`), or says in one line what was stored and what was not."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from retrieval.config import Settings
from retrieval.documents import Checked, check_batch, check_ids
from retrieval.embed.base import normalize
from retrieval.embed.external import ExternalEncoder, is_external
from retrieval.embed.spec import EncoderSpec
from retrieval.errors import IndexWriteError, InvalidInputError, RetrievalError
from retrieval.executors import EmbedPool, LocalPool, check_executor
from retrieval.store.records import NewDocument, content_hash
from retrieval.store.repository import Store
from retrieval.sync.keeper import EncoderSlot, IndexKeeper
from retrieval.sync.passages import Splitter, passage_texts, recording_split
from retrieval.sync.publisher import BackgroundPublisher
from retrieval.sync.replay import SyncReport
from retrieval.sync.vectors import EMBED_CHUNK, BulkEmbedReport, embed_missing, embed_stored


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
    sync: SyncReport | None = None  # the publish before returning; None when none ran (or in the background)
    embed: BulkEmbedReport | None = None  # the bulk embedding on an executor (ray) before the sync
    # Stored, and found by every search already; the index generation that holds it is
    # published shortly after, by the background publisher (``sync`` is None).
    background: bool = False

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
            "background": self.background,  # published after returning (searches find it already)
            **({"embed": self.embed.as_dict()} if self.embed else {}),
        }


class Writer:
    """The write side of a store: :meth:`retrieval.Retriever.ingest`, ``ingest_files``,
    ``embed`` and ``delete`` run here."""

    def __init__(self, settings: Settings, store: Store, keeper: IndexKeeper, encoder: EncoderSlot,
                 publisher: BackgroundPublisher) -> None:
        self.settings = settings
        self.store = store
        self.keeper = keeper
        self.encoder = encoder
        self.publisher = publisher

    def background(self, sync: bool, wait: bool | None, documents: int, executor: str | None = None) -> bool:
        """Whether a write of ``documents`` publishes in the background: ``wait`` when
        given (False: in the background, whatever the size), else the ``ingest.publish``
        setting for at most ``ingest.background_max_docs`` documents. A write without a
        sync, or embedding on Ray, never does, nor the first write of a store: its
        publish creates the index, which pins the store's model for every later write."""
        if not sync or (executor or self.settings.ingest.executor) != "local":
            return False
        if self.keeper.index_store.current_name() is None:
            return False
        if wait is not None:
            return not wait
        ingest = self.settings.ingest
        return ingest.publish == "background" and documents <= ingest.background_max_docs

    def _pending(self) -> int:
        """Change-log entries the current index generation has not applied."""
        manifest = self.keeper.index_store.read_manifest()
        return self.store.backlog(manifest.last_seq if manifest else 0)[0]

    def ingest(self, documents: Iterable[Any], *, sync: bool = True, wait: bool | None = None,
               embed_first: bool = False, executor: str | None = None, address: str | None = None,
               skip_invalid: bool = False) -> IngestReport:
        """Upsert documents and publish them: dicts with ``id``, ``text`` and optional
        ``metadata`` (or :class:`~retrieval.documents.Document` objects).

        When this returns, the documents are durable in the database and every search (in
        this process or another) finds them, with their new text and score. Whether the
        index generation that holds them is published too: with ``wait`` True, yes
        (``report.sync`` says what it did); with the default (``wait`` None) and
        ``ingest.publish: background``, a write of at most ``ingest.background_max_docs``
        documents returns first and is published shortly after by a background thread
        (``report.background``; searches score it exactly until then, from vectors
        embedded before the write); ``wait`` False always publishes in the background.
        ``sync`` False publishes nothing (a worker or ``retrieve sync`` does).

        Every document is checked first, by the rules the CLI and the HTTP service apply
        too (:mod:`retrieval.documents`: ids, non-empty text within
        ``max_document_bytes``, metadata that JSON can hold, no NaN); any invalid one
        raises :class:`~retrieval.errors.InvalidInputError` listing them all, and nothing
        is written, unless ``skip_invalid`` (then the valid ones are stored and the report
        lists the rest). A bare string or dict instead of a list is a :class:`TypeError`.

        A store whose vectors come from the caller (model ``external:NAME:DIM``, see
        :mod:`retrieval.embed.external`) takes a ``vector`` with each document (a
        sequence of DIM finite numbers; L2-normalised here, so that inner product is
        cosine), stored under the model's key before the documents are written: the
        sync never embeds. A document without one is refused unless its text already
        has a stored vector (a metadata update); one text has one vector per model, so
        a text stored before keeps its vector. Any other store refuses vectors.

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
        checked, invalid = check_batch(documents, max_bytes=self.settings.ingest.max_document_bytes, vectors=True)
        problems = [str(p) for p in invalid]
        total = len(checked) + len(problems)
        checked, given, refused = self._caller_vectors(checked)
        problems += refused
        if problems and not skip_invalid:
            raise InvalidInputError(problems, total, noun="documents",
                                    hint="pass skip_invalid=True to store the valid ones")
        docs = [NewDocument(c.external_id, c.text, c.metadata) for c in checked]
        background = self.background(sync, wait, len(docs), executor)
        checked_before = False
        if given:
            # Stored before the documents' commit, as embed_first stores its vectors: the
            # sync, and a search scoring the documents before it, find them.
            self._before_write(sync, executor)
            checked_before = True
            encoder = self.encoder.get()
            self.store.add_embeddings(encoder.model_key, encoder.dim, list(given.items()))
        if docs and (embed_first or (background and not given and not self.external())):
            # In the background a search scores these before they are published: embedded
            # now, the search path never embeds them.
            if not checked_before:
                self._before_write(sync, executor)
                checked_before = True
            encoder = self.encoder.get()
            splitter = Splitter.of(self.settings.index, encoder)
            embed_missing(self.store, encoder, passage_texts(encoder, splitter, [d.text for d in docs]))
        report = self._write([docs], sync=sync, executor=executor, address=address, t0=t0, background=background,
                             checked=checked_before)
        report.invalid, report.problems = len(problems), problems
        return report

    def external(self) -> bool:
        """Whether this store's vectors come from the caller (without building an encoder)."""
        loaded = self.encoder.loaded
        return isinstance(loaded, ExternalEncoder) if loaded is not None else is_external(self.settings.encoder.model)

    def _caller_vectors(self, checked: list[Checked]) -> tuple[list[Checked], dict[str, np.ndarray], list[str]]:
        """The documents whose vectors are fine, their caller's vectors (normalised) by
        content hash, and a ``documents[i]: reason`` for each of the others."""
        external = self.external()
        if not external and all(c.vector is None for c in checked):
            return checked, {}, []
        encoder = self.encoder.get()
        if external:
            bare = list(dict.fromkeys(content_hash(c.text) for c in checked if c.vector is None))
            with self.store.read() as snap:
                stored = set(snap.embeddings(encoder.model_key, bare)) if bare else set()
        kept: list[Checked] = []
        given: dict[str, np.ndarray] = {}
        problems: list[str] = []
        for c in checked:
            where = f"{c.source} (id {c.external_id[:80]!r})"
            if not external:
                if c.vector is not None:
                    problems.append(f"{where}: a vector was given, but this store embeds texts with its own model "
                                    f"({self.settings.encoder.model}); only a store of external:NAME:DIM vectors "
                                    "takes them")
                    continue
            elif c.vector is None:
                if content_hash(c.text) not in stored:
                    assert isinstance(encoder, ExternalEncoder)
                    problems.append(f"{where}: no vector; {encoder.refusal()}")
                    continue
            elif len(c.vector) != encoder.dim:
                problems.append(f"{where}: the vector has {len(c.vector)} dimensions; this store's "
                                f"({encoder.model_key}) have {encoder.dim}")
                continue
            if c.vector is not None:
                with np.errstate(over="ignore"):  # a float64 beyond float32's range: refused below
                    raw = np.asarray(c.vector, dtype=np.float32)
                    norm = float(np.linalg.norm(raw))
                if not np.isfinite(raw).all() or not np.isfinite(norm) or norm == 0.0:
                    problems.append(f"{where}: the vector does not fit float32 (too large or too small a length)")
                    continue
                given.setdefault(content_hash(c.text), normalize(raw.reshape(1, -1))[0])
            kept.append(c)
        return kept, given, problems

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
        (or, with ``skip_invalid``, the valid ones), then publish before returning (with
        ``sync``): a bulk load, and the one-shot ``retrieve ingest``, never leave it to
        the background.

        The files are read twice, a record at a time (:class:`~retrieval.readers.RecordScan`):
        once to validate everything, once to store it in batches within one transaction,
        so memory follows a batch, not the files. ``csv_types``: how CSV cells become
        metadata (``infer``: numbers written as numbers are numbers; ``text``; or
        ``COLUMN:TYPE``)."""
        from retrieval.readers import RecordScan

        if self.external():
            raise RetrievalError(f"{self.encoder.get().model_key} vectors come from the caller and files carry none: "
                                 "ingest these documents with their vectors through the Python API")
        t0 = time.perf_counter()
        try:
            scan = RecordScan(sources, fmt=fmt, id_field=id_field, text_fields=text_fields,
                              metadata_fields=metadata_fields, stdin=stdin, max_bytes=self.settings.ingest.max_document_bytes,
                              csv_types=csv_types)
        except (OSError, ValueError) as exc:
            raise RetrievalError(file_error(exc)) from exc
        with scan:
            try:
                problems = [str(p) for p in scan.check()]
            except (OSError, ValueError) as exc:
                raise RetrievalError(file_error(exc)) from exc
            if problems and not skip_invalid:
                raise InvalidInputError(problems, scan.valid + len(problems))
            batches = ([NewDocument(r.external_id, r.text, r.metadata) for r in batch] for batch in scan.batches())
            try:
                report = self._write(batches, sync=sync, executor=executor, address=address, t0=t0)
            except (OSError, ValueError) as exc:  # a file changed between the two reads: nothing was written
                raise RetrievalError(file_error(exc)) from exc
        report.invalid = len(problems)
        report.problems = problems
        report.seconds = time.perf_counter() - t0 - report.setup_seconds
        return report

    def _before_write(self, sync: bool, executor: str | None) -> bool:
        """Everything that can refuse a write, checked before anything is written: the
        index's model, the index folder's lock, the executor. True for a remote executor."""
        if sync:
            self.keeper.check_model()
            self.keeper.sync_lock()  # an index folder this user cannot write is refused now, not after the commit
        return check_executor(executor or self.settings.ingest.executor) != "local"

    def _write(self, batches: Iterable[list[NewDocument]], *, sync: bool, executor: str | None, address: str | None,
               t0: float, background: bool = False, checked: bool = False) -> IngestReport:
        remote = (check_executor(executor or self.settings.ingest.executor) != "local" if checked
                  else self._before_write(sync, executor))
        counts = self.store.upsert_batches(batches)
        report = IngestReport(added=counts.added, updated=counts.updated, unchanged=counts.unchanged)
        if remote:
            report.embed = self.embed(executor=executor, address=address)
        if background:
            # Durable now; the publisher publishes it (and any backlog an earlier run left).
            if counts.added or counts.updated or self.publisher.last_error is not None:
                self.publisher.request()
                report.background = True
        # A backlog left by an earlier run that stored its documents but did not get to
        # publish them (killed, or it lost the database) is published now too.
        elif sync and (counts.added or counts.updated or self._pending()):
            try:
                report.sync = self.keeper.sync()
            except RetrievalError as exc:
                if not (counts.added or counts.updated):
                    raise
                raise IndexWriteError(
                    f"stored {counts.added} new and {counts.updated} updated documents in the database, but could not "
                    f"publish them to the index: {exc}. Searches find them already (scored exactly until they are "
                    "published); `retrieve sync`, or a running worker, publishes them") from exc
        if self.encoder.loaded is not None:
            report.setup_seconds = self.encoder.loaded.setup_since(t0)
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
        name = check_executor(executor or s.ingest.executor)
        self.keeper.check_model()
        encoder = self.encoder.get()
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

            spec = EncoderSpec.pinned(encoder, s.encoder.model, threads=s.ray.threads, device=s.encoder.device)
            pool = RayPool(spec, address=address or s.ray.address, actors=actors or s.ray.actors,
                           runtime_env=runtime_env)
        report.startup_seconds = time.perf_counter() - t0
        splitter = Splitter.of(s.index, encoder)
        with pool:
            embed_stored(self.store, pool, commit_every=commit_every, report=report,
                         progress=s.ingest.progress if progress is None else progress,
                         split=recording_split(self.store, encoder, splitter))
        return report

    def delete(self, external_ids: Sequence[str], *, sync: bool = True,
               wait: bool | None = None) -> tuple[int, list[str]]:
        """Delete documents by id; returns (deleted, ids that did not exist). ``external_ids``
        is a sequence (a bare string is a :class:`TypeError`: ``delete("12")`` would
        otherwise delete "1" and "2"). When this returns the deletes are durable and no
        search returns those documents; ``wait`` and the settings decide whether the
        index generation without them is published before or shortly after, as for
        :meth:`ingest`."""
        ids = check_ids(external_ids)
        if sync:
            self.keeper.sync_lock()  # an index folder this user cannot write is refused before the delete
        deleted, missing = self.store.delete(ids)
        if self.background(sync, wait, len(ids)):
            if deleted or self.publisher.last_error is not None:
                self.publisher.request()
        elif sync and deleted:
            try:
                self.keeper.sync()
            except RetrievalError as exc:
                raise IndexWriteError(
                    f"deleted {deleted} documents from the database, but could not publish that to the index: {exc}. "
                    "Searches no longer return them; `retrieve sync`, or a running worker, publishes it") from exc
        return deleted, missing


def file_error(exc: BaseException) -> str:
    """An input file's problem in one line (an OSError's own text names errno and path)."""
    if isinstance(exc, FileNotFoundError):
        return f"{exc.filename or exc}: no such file" if exc.filename else str(exc)
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)
