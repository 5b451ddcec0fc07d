"""Retriever: the one object that coordinates store, encoder and index.

The CLI, the Python API and the HTTP service all call its methods; none of them talks to
the store, the index or the sync directly. It composes the parts that do the work:
:class:`~retrieval.sync.keeper.IndexKeeper` (the generation served, and every publish),
:class:`~retrieval.writes.Writer` (ingest, bulk embedding, deletes),
:class:`~retrieval.search.engine.SearchEngine` (every search), and
:mod:`retrieval.inspection` (lag, status, verify). The library reports through
``logging`` (logger ``retrieval``): warnings such as a rebuilt index reach a user's
stderr through the CLI's handler, or Python's default one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval import inspection
from retrieval.config import Settings, load_settings
from retrieval.documents import Document, check_ids
from retrieval.embed.base import Encoder
from retrieval.errors import ArgumentError, NotFoundError
from retrieval.index.policy import Merge
from retrieval.index.segment import IndexVersion
from retrieval.index.store import IndexStore
from retrieval.inspection import VerifyReport
from retrieval.search.engine import Arguments, SearchEngine
from retrieval.search.hits import Hit
from retrieval.store.repository import Store
from retrieval.sync.calibration import QueryRecorder
from retrieval.sync.keeper import EncoderSlot, IndexKeeper
from retrieval.sync.merge import MergeReport
from retrieval.sync.passages import Splitter, passage_keys
from retrieval.sync.publisher import BackgroundPublisher
from retrieval.sync.replay import SyncReport
from retrieval.sync.vectors import EMBED_CHUNK, BulkEmbedReport, vectors_of
from retrieval.writes import IngestReport, Writer

__all__ = ["Hit", "IngestReport", "Retriever", "VerifyReport"]


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
        self._encoder = EncoderSlot(settings, index_store.model_key, encoder)
        # The query sample's buffer: searches by text fill it; it is written before a
        # sync or merge (which may calibrate with it) and when the retriever closes.
        self.queries = QueryRecorder(store, settings.search)
        self.keeper = IndexKeeper(settings, store, index_store, self._encoder)
        self.keeper.queries = self.queries
        # Publishes small writes after they return (ingest.publish: background).
        self.publisher = BackgroundPublisher(lambda: self.keeper.sync())
        self._writer = Writer(settings, store, self.keeper, self._encoder, self.publisher)
        self._engine = SearchEngine(settings, store, self.keeper, self._encoder, self.queries)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, **overrides: Any) -> Retriever:
        """Open the configured store (migrating it) and index folder; the model loads lazily."""
        settings = settings or load_settings(overrides=overrides)
        if overrides and settings is not None:
            settings = settings.with_overrides("argument", **overrides)
        store = Store.open(settings.store.database_url, busy_timeout_ms=settings.store.busy_timeout_ms)
        index_store = IndexStore(settings.store.index_dir, keep=settings.store.keep_index_versions,
                                 hnsw_ef_search=settings.index.hnsw_ef_search)
        return cls(settings, store, index_store)

    @classmethod
    def open(cls, path: str | Path, model: str | None = None, **overrides: Any) -> Retriever:
        """A store in folder ``path`` (``retrieval.db`` and ``index/`` inside it)."""
        # Absolute: a background publish (or one at exit) may run after the caller changed
        # its working directory.
        folder = Path(path).absolute()
        values: dict[str, Any] = {"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index")}
        if model:
            values["model"] = model
        values.update(overrides)
        return cls.from_settings(load_settings(overrides=values))

    @property
    def encoder(self) -> Encoder:
        """The encoder, loaded on first use (``auto`` prefers the index's vectors)."""
        return self._encoder.get()

    @encoder.setter
    def encoder(self, encoder: Encoder) -> None:
        self._encoder.loaded = encoder

    def close(self) -> None:
        """Publish what the background publisher has pending (raising
        :class:`~retrieval.errors.IndexWriteError` if that fails: the documents stay
        stored and the next sync publishes them), write the queries the query sample holds
        (never waiting for a lock), then close the database."""
        try:
            self.publisher.close()
        finally:
            self.queries.flush()
            self.store.close()

    def flush(self) -> None:
        """Publish now the writes that returned before their index generation was
        published (see :meth:`ingest`); raises
        :class:`~retrieval.errors.IndexWriteError` if that publish failed."""
        self.publisher.flush()

    def __enter__(self) -> Retriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the index --------------------------------------------------------------------

    def current_index(self) -> IndexVersion:
        """The current index version, reloaded when another process published a newer one,
        and rebuilt from stored vectors when it is missing or corrupt."""
        return self.keeper.current()

    def sync_lock(self) -> Any:
        """The lock every publisher of this index folder holds (a file lock in it)."""
        return self.keeper.sync_lock()

    def merge_lock(self) -> Any:
        """The lock a merge holds: one merge at a time per store."""
        return self.keeper.merge_lock()

    @property
    def replica_name(self) -> str:
        """This index folder's name among the replicas following the database."""
        return self.keeper.replica_name

    def sync(self, *, max_changes: int | None = None, inline_merges: bool = True) -> SyncReport:
        """Apply pending changes to the index as a new segment and publish a new generation.

        A database that moved backwards (a restore) is noticed first, and the index is
        rebuilt from the stored vectors. ``max_changes`` bounds the change-log entries
        applied in this generation. Merges of at most ``merge_inline_max_docs`` live rows
        then run inline (unless ``inline_merges`` is off: the worker runs them in the
        background instead)."""
        report = self.keeper.sync(max_changes=max_changes, inline_merges=inline_merges)
        if max_changes is None:
            self.publisher.succeeded()
        return report

    def pending_merges(self) -> list[Merge]:
        """The merges the policy asks for now (reads one manifest)."""
        return self.keeper.pending_merges()

    def merge(self, *, max_docs: int | None = None, wait: bool = True, threads: int | None = None,
              stop: Any = None, progress: Any = None, fewest: bool = False) -> list[MergeReport]:
        """Run the merges the policy asks for, one after another, until none is left.

        ``max_docs`` skips merges of more live rows (inline merges stay cheap); ``wait``
        waits for a merge another process runs instead of returning; ``threads`` bounds the
        FAISS threads a build uses; ``stop`` (an Event) ends the loop between merges.
        ``fewest`` merges down to the fewest segments ``index.merge_memory_mb`` allows
        (a search costs about one segment's search per segment; a store after a bulk load).
        Searches go on throughout; syncs wait only for each manifest switch."""
        return self.keeper.merge(max_docs=max_docs, wait=wait, threads=threads, stop=stop, progress=progress,
                                 fewest=fewest)

    def reindex(self, model: str | None = None) -> SyncReport:
        """Rebuild the index from stored vectors (re-embedding nothing that is stored).

        With ``model``, every document is embedded with that model into a new index; the
        old index keeps serving until the new one is published."""
        return self.keeper.reindex(model)

    # -- writes -----------------------------------------------------------------------

    def ingest(self, documents: Iterable[Any], *, sync: bool = True, wait: bool | None = None,
               embed_first: bool = False, executor: str | None = None, address: str | None = None,
               skip_invalid: bool = False) -> IngestReport:
        """Upsert documents (dicts with ``id``, ``text`` and optional ``metadata``, and a
        ``vector`` for a store whose vectors come from the caller, model
        ``external:NAME:DIM``: see :meth:`retrieval.writes.Writer.ingest`) and publish them.

        When this returns the documents are durable in the database and every search, in
        this process or another, finds them (an updated one with its new text and score).
        A write of at most ``ingest.background_max_docs`` documents (1000) returns then,
        and a background thread publishes the index generation that holds it shortly
        after (``report.background``; until then searches score it exactly from its
        stored vector); :meth:`close`, :meth:`flush` and interpreter exit publish what
        is left. ``wait=True``, or the setting ``ingest.publish: wait``, publishes before
        returning (``report.sync``), as larger writes do; ``wait=False`` publishes in the
        background whatever the size.

        Every document is checked first by the rules files and HTTP follow too
        (:mod:`retrieval.documents`); any invalid one raises
        :class:`~retrieval.errors.InvalidInputError` listing them all, and nothing is
        written, unless ``skip_invalid``. A bare string or dict is a :class:`TypeError`.
        A text stored before is not re-embedded. ``embed_first`` embeds before writing (the
        HTTP service does); ``executor`` ``ray`` embeds on a Ray cluster (see :meth:`embed`).
        """
        return self._writer.ingest(documents, sync=sync, wait=wait, embed_first=embed_first, executor=executor,
                                   address=address, skip_invalid=skip_invalid)

    def ingest_files(self, sources: Sequence[str], *, fmt: str | None = None, id_field: str = "id",
                     text_fields: Sequence[str] = ("text",), metadata_fields: Sequence[str] | None = None,
                     skip_invalid: bool = False, stdin: Any = None, sync: bool = True, executor: str | None = None,
                     address: str | None = None, csv_types: Sequence[str] = ("infer",)) -> IngestReport:
        """Ingest files (JSONL, JSON, CSV, text; ``-`` for stdin), streamed: every record is
        validated before any is written, then stored in batches within one transaction.
        ``csv_types``: ``infer`` (cells written as numbers are numbers), ``text``, or
        ``COLUMN:TYPE``."""
        return self._writer.ingest_files(sources, fmt=fmt, id_field=id_field, text_fields=text_fields,
                                         metadata_fields=metadata_fields, skip_invalid=skip_invalid, stdin=stdin,
                                         sync=sync, executor=executor, address=address, csv_types=csv_types)

    def embed(self, *, executor: str | None = None, address: str | None = None, actors: int | None = None,
              commit_every: int = EMBED_CHUNK, progress: bool | None = None,
              runtime_env: dict[str, Any] | None = None) -> BulkEmbedReport:
        """Embed every stored document that has no vector for the configured model, here or
        on a Ray cluster (``executor`` ``ray``, at ``address``, with ``actors`` actors);
        resumable. The index is not touched: the next sync publishes the documents."""
        return self._writer.embed(executor=executor, address=address, actors=actors, commit_every=commit_every,
                                  progress=progress, runtime_env=runtime_env)

    def embed_texts(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """The store's vectors of ``texts`` (L2-normalised float32, one row per text, as a
        document of that text gets) and each text's number of tokens; texts the store
        already holds a vector of are not embedded again, and nothing is stored.

        A text longer than the model's window is refused with :class:`ArgumentError`
        naming it: one vector would see only its beginning (documents are split into
        passages for that reason), and a caller should split it instead."""
        if isinstance(texts, str):
            raise TypeError("embed_texts takes a sequence of texts, not one string")
        encoder = self.encoder
        window = encoder.window
        tokens = [len(spans) for spans in encoder.token_spans(texts)]
        over = [(i, n) for i, n in enumerate(tokens) if n > window]
        if over:
            i, n = over[0]
            more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
            raise ArgumentError(f"input[{i}] has {n} tokens, more than the {window} that {self.settings.encoder.model} "
                                f"reads{more}: split it into passages of at most {window} tokens")
        return vectors_of(self.store, encoder, texts), tokens

    def delete(self, external_ids: Sequence[str], *, sync: bool = True,
               wait: bool | None = None) -> tuple[int, list[str]]:
        """Delete documents by id; returns (deleted, ids that did not exist). A bare string is
        a :class:`TypeError` (``delete("12")`` would otherwise delete "1" and "2"). When
        this returns the deletes are durable and no search returns those documents; the
        index generation without them is published before (``wait=True``, or more than
        ``ingest.background_max_docs`` ids) or shortly after, as for :meth:`ingest`."""
        return self._writer.delete(external_ids, sync=sync, wait=wait)

    def get(self, external_id: str) -> Document:
        """The stored document with this id."""
        (key,) = check_ids([external_id], "id")
        doc = self.store.get(key)
        if doc is None:
            raise NotFoundError(f"no document with id {key!r}")
        return Document(doc.external_id, doc.text, doc.metadata)

    # -- search -----------------------------------------------------------------------

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               where: Any = None, mode: str = "dense", alpha: float | None = None, plus: Sequence[str] = (),
               minus: Sequence[str] = (), like: Sequence[str] = (), unlike: Sequence[str] = (),
               include_examples: bool = False) -> list[Hit]:
        """The top-``k`` documents for ``query``, best first.

        ``mode``: ``dense`` (cosine similarity, the default), ``keyword`` (BM25 over
        SQLite's FTS5 index, ts_rank_cd over PostgreSQL's tsvector) or ``hybrid``
        (reciprocal rank fusion of both; with ``alpha``, a convex combination of their
        normalised scores, ``alpha`` weighing the dense one). ``where`` is a metadata
        filter (:mod:`retrieval.filters`); the result has min(k, matching documents) hits.

        Vector arithmetic (dense mode): the query vector is the normalised sum of the
        vectors of ``query``, the ``plus`` texts and the stored ``like`` documents, less
        those of the ``minus`` texts and ``unlike`` documents; the examples are left out
        of the results unless ``include_examples``.
        """
        return self._engine.search(query, k, min_score=min_score, where=where, mode=mode, alpha=alpha, plus=plus,
                                   minus=minus, like=like, unlike=unlike, include_examples=include_examples)

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None,
                    where: Any = None, mode: str = "dense", alpha: float | None = None,
                    snippets: bool = True) -> list[list[Hit]]:
        """Search several queries at once (encoded in batches). ``snippets=False`` leaves
        out keyword and hybrid snippets (each costs a lookup in the keyword index)."""
        return self._engine.search_many(queries, k, min_score=min_score, where=where, mode=mode, alpha=alpha,
                                        snippets=snippets)

    def similar(self, external_id: str, k: int | None = None, *, where: Any = None,
                min_score: float | None = None) -> list[Hit]:
        """The documents nearest to a stored document, from its stored vector (nothing is
        re-embedded when it has one), itself left out."""
        return self._engine.search(None, k, where=where, min_score=min_score, like=[external_id])

    def document_vectors(self, external_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of documents, by id (ids not stored are left out): a
        document's own vector, or the normalised mean of its passages' for one split into
        passages. Stored vectors are read, not recomputed (a document of a store that
        embeds texts itself whose vector is missing is embedded, and its vector stored)."""
        return self._engine.document_vectors(external_ids)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None, *, min_score: float | None = None,
                       where: Any = None) -> list[list[Hit]]:
        """Search with query vectors (one row per query, the index's model's), consistent
        with the database at this moment: documents changed since the index version was
        published are scored exactly from their stored vectors, so a search never returns
        a deleted or stale document and sees every committed one."""
        return self._engine.search_vectors(vectors, k, min_score=min_score, where=where)

    def check_search(self, texts: Sequence[str], k: int | None = None, min_score: float | None = None,
                     mode: str = "dense", alpha: float | None = None, where: Any = None) -> Arguments:
        """A search's arguments checked, as every search checks them (raises
        :class:`~retrieval.errors.ArgumentError`): for callers that queue searches first."""
        return self._engine.check(texts, k, min_score, mode, alpha, where)

    # -- inspection -------------------------------------------------------------------

    def lag(self) -> dict[str, Any]:
        """How far the index is behind the database (reads one manifest and the log)."""
        return inspection.lag(self.store, self.index_store)

    def version_holding(self, report: IngestReport) -> str | None:
        """The index version that holds the write ``report`` describes (the current one,
        or a newer one), or None while that write waits for its background publish."""
        if report.background and self.lag()["pending_changes"]:
            return None
        return self.index_version()

    def index_version(self) -> str | None:
        """The index version searches use now, as status names it (``g0000000042``)."""
        name = self.index_store.current_name()
        return name.removesuffix(".json") if name else None

    def vitals(self) -> dict[str, Any]:
        """The figures a monitor polls: :meth:`lag`, documents and the index's size on disk."""
        return inspection.vitals(self.store, self.index_store, self.replica_name)

    def status(self) -> dict[str, Any]:
        """Counts, model, index version and sizes, and this process's background
        publisher (``background_publish``: pending, last error); loads neither the model
        nor torch."""
        st = inspection.status(self.settings, self.store, self.index_store, self.replica_name)
        st["background_publish"] = self.publisher.state()
        return st

    def verify(self) -> VerifyReport:
        """Check that the index agrees exactly with the database, and every segment file with
        its checksum; changes not yet synced are pending, not drift."""
        def keys(docs: list[tuple[int, str]]) -> tuple[Any, list[str]]:
            encoder = self._encoder.get()
            return passage_keys(encoder, Splitter.of(self.settings.index, encoder), docs)

        return inspection.verify(self.store, self.index_store, self.current_index(), keys)
