"""A LangChain ``VectorStore`` over a local store: :class:`RetrievalVectorStore`.

LangChain's documents map to the store's one to one: ``page_content`` is the text,
``metadata`` the metadata (a JSON object, filtered with the store's filter language:
``filter={"color": "red", "price": {"$lt": 100}}``, see docs/search.md), and ``id`` the
document's id (a uuid4 is made for a document without one). Adding a document whose id
is stored replaces it, as an ingest does.

With an ``embedding`` (a LangChain ``Embeddings``), the texts and queries are embedded
by it, and the store keeps its vectors under the external model
``external:CLASS:DIM`` (:mod:`retrieval.embed.external`): the store never embeds, and
one store holds one model's vectors (an embeddings object of another class or dimension
is refused with :class:`~retrieval.errors.ModelMismatchError`). Without one, the store's
own encoder (the ``model`` setting) embeds texts and queries.

Scores are cosine similarities (higher is closer), which are also LangChain's relevance
scores. The async methods run the sync ones in LangChain's default executor.

:class:`RetrievalServerRetriever` is a LangChain retriever over a running ``retrieve
serve``, asked over HTTP (``POST /v1/search``): nothing of the store is loaded here;
:class:`RetrievalServerVectorStore` is a vector store over one (its documents endpoints
too, with the caller's vectors on a store of model ``external:NAME:DIM``).

Needs ``langchain-core`` (``pip install retrieval[langchain]``); nothing else in the
package imports this module.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import httpx
import numpy as np
from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

from retrieval.client import read_answer, search_payload, unreachable
from retrieval.embed.external import ExternalEncoder, external_model
from retrieval.errors import ArgumentError, ModelMismatchError, ServiceError
from retrieval.retriever import Retriever
from retrieval.search.hits import Hit

__all__ = ["RetrievalServerRetriever", "RetrievalServerVectorStore", "RetrievalVectorStore"]


class RetrievalVectorStore(VectorStore):
    """A :class:`~retrieval.Retriever` as a LangChain vector store (see the module doc).

    ``store`` is a Retriever, or a folder (a store in it: ``retrieval.db`` and
    ``index/``, opened with ``settings`` as overrides); None opens the configured store
    (``config.yaml``, ``RETRIEVE_*``). ``embedding_name`` names the vectors of
    ``embedding`` (default: its class name).
    """

    def __init__(self, store: Retriever | str | os.PathLike[str] | None = None, embedding: Embeddings | None = None,
                 *, embedding_name: str | None = None, **settings: Any) -> None:
        if isinstance(store, Retriever):
            if settings:
                raise ArgumentError("settings apply to a store opened here, not to a Retriever passed in")
            self.retriever = store
        elif store is None:
            self.retriever = Retriever.from_settings(**settings)
        else:
            self.retriever = Retriever.open(Path(store), **settings)
        self._embedding = embedding
        self._name = embedding_name or (type(embedding).__name__ if embedding is not None else None)
        self._lock = threading.Lock()
        self._external: ExternalEncoder | None = None  # installed once the embeddings' dimension is known

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    def close(self) -> None:
        self.retriever.close()

    # -- the caller's vectors ---------------------------------------------------------

    def _use(self, dim: int) -> ExternalEncoder:
        """The external encoder of this store's embeddings with ``dim`` dimensions,
        installed on the retriever (a store of other vectors is refused on write)."""
        assert self._name is not None
        with self._lock:
            if self._external is not None:
                if self._external.dim != dim:
                    raise ModelMismatchError(f"{self._name} returned {dim}-dimensional vectors, but this store "
                                             f"holds its {self._external.dim}-dimensional ones")
                return self._external
            self._external = ExternalEncoder.of(external_model(self._name, dim))
            self.retriever.encoder = self._external
            return self._external

    def _known(self) -> ExternalEncoder:
        """The external encoder before any text is embedded (a delete): the index's
        dimension when it holds these embeddings' vectors, else one embedded probe's."""
        if self._external is not None:
            return self._external
        assert self._name is not None and self._embedding is not None
        manifest = self.retriever.index_store.read_manifest()
        if manifest is not None and manifest.model_key.startswith(ExternalEncoder.of(external_model(self._name, 1))
                                                                  .model_key.split("|")[0] + "|"):
            return self._use(manifest.dim)
        return self._use(len(self._embedding.embed_query("dimension")))

    def _embed_documents(self, texts: list[str]) -> np.ndarray:
        assert self._embedding is not None and self._name is not None
        vectors = _embedded(self._embedding, texts, self._name)
        self._use(vectors.shape[1])
        return vectors

    def _embed_query(self, query: str) -> list[float]:
        assert self._embedding is not None
        return list(self._embedding.embed_query(query))

    # -- writes -----------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[Any, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Store texts (upserts by id; a missing id, None among ``ids`` included, gets a
        uuid4) and publish them; returns their ids. A repeated id is stored once, its last
        text winning. ``kwargs`` go to :meth:`retrieval.Retriever.ingest`."""
        keys, docs = _upserts(texts, metadatas, ids)
        if docs and self._embedding is not None:
            vectors = self._embed_documents([d["text"] for d in docs])
            for doc, vector in zip(docs, vectors):
                doc["vector"] = vector
        if docs:
            self.retriever.ingest(docs, **kwargs)
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (missing ones are no error); True. Without ids, False:
        a whole store is deleted with its folder, not here."""
        if ids is None:
            return False
        if self._embedding is not None and self.retriever.store.get_many(list(ids)):
            self._known()  # the sync that publishes the delete needs the store's model
        self.retriever.delete(list(ids), **kwargs)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in the order given; missing ones are left out."""
        found = self.retriever.store.get_many([str(i) for i in ids])
        return [Document(page_content=d.text, metadata=dict(d.metadata), id=d.external_id)
                for d in (found.get(str(i)) for i in ids) if d is not None]

    # -- searches ---------------------------------------------------------------------

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest ``query`` with their cosine similarity, best first."""
        if self._embedding is not None:
            return self.similarity_search_with_score_by_vector(self._embed_query(query), k, filter=filter, **kwargs)
        return [(_document(h), h.score) for h in self.retriever.search(query, k, where=filter, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict[str, Any] | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest a query vector (normalised here), with their
        cosine similarity, best first."""
        return [(_document(h), h.score) for h in self._by_vector(embedding, k, filter, **kwargs)]

    def _by_vector(self, embedding: Sequence[float], k: int, where: Any, **kwargs: Any) -> list[Hit]:
        query = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0.0:
            raise ArgumentError("the query vector has no direction (all zeros, NaN or infinite)")
        if self._embedding is not None:
            self._use(query.shape[1])
        return self.retriever.search_vectors(query / norm, k, where=where, **kwargs)[0]

    def max_marginal_relevance_search(self, query: str, k: int = 4, fetch_k: int = 20, lambda_mult: float = 0.5,
                                      filter: dict[str, Any] | None = None, **kwargs: Any) -> list[Document]:
        """``k`` documents among the ``fetch_k`` nearest ``query``, chosen for relevance
        and diversity (``lambda_mult`` 1: relevance only, 0: diversity only)."""
        if self._embedding is not None:
            vector = self._embed_query(query)
        else:
            vector = self.retriever.encoder.encode_queries([query])[0].tolist()
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter=filter, **kwargs)

    def max_marginal_relevance_search_by_vector(self, embedding: list[float], k: int = 4, fetch_k: int = 20,
                                                lambda_mult: float = 0.5, filter: dict[str, Any] | None = None,
                                                **kwargs: Any) -> list[Document]:
        """MMR over the stored vectors of the ``fetch_k`` nearest candidates."""
        hits = self._by_vector(embedding, max(fetch_k, k), filter, **kwargs)
        if not hits:
            return []
        stored = self.retriever.document_vectors([h.id for h in hits])
        hits = [h for h in hits if h.id in stored]  # deleted meanwhile
        query = np.asarray(embedding, dtype=np.float32)
        chosen = maximal_marginal_relevance(query / max(float(np.linalg.norm(query)), 1e-12),
                                            [stored[h.id].tolist() for h in hits], lambda_mult=lambda_mult, k=k)
        return [_document(hits[i]) for i in chosen]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Scores are cosine similarities already: LangChain's relevance for cosine.
        return _identity

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict[Any, Any]] | None = None, *,
                   ids: list[str] | None = None, store: Retriever | str | os.PathLike[str] | None = None,
                   embedding_name: str | None = None, **settings: Any) -> RetrievalVectorStore:
        """A store (``store``: a Retriever, a folder, or None for the configured one)
        holding ``texts``, embedded by ``embedding``."""
        vs = cls(store, embedding, embedding_name=embedding_name, **settings)
        vs.add_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return vs


def _identity(score: float) -> float:
    return score


def _document(hit: Hit) -> Document:
    return Document(page_content=hit.text, metadata=dict(hit.metadata), id=hit.id)


# The search arguments an invoke may override (``retriever.invoke(query, k=3)``).
_OVERRIDES = ("k", "where", "mode", "min_score", "alpha")


class RetrievalServerRetriever(BaseRetriever):
    """The ``k`` documents a running ``retrieve serve`` at ``url`` finds for a query.

    ``api_key`` is the service's key (its ``RETRIEVE_API_KEY``; None for a service without
    one); ``where`` a metadata filter in the store's language (docs/search.md); ``mode``
    dense, keyword or hybrid (``alpha`` weighs them); ``min_score`` drops weaker hits.
    ``k``, ``where``, ``mode``, ``min_score`` and ``alpha`` may also be given to one call:
    ``retriever.invoke("trail shoes", k=3, where={"kind": "shoes"})``.

    A document's ``id`` is the stored id, its metadata the stored metadata plus ``score``
    and ``id``. The service's errors are raised as the :class:`~retrieval.errors.RetrievalError`
    a local search raises (a bad filter as ``FilterError``), in one line; a refused key
    or an unreachable service as :class:`~retrieval.errors.ServiceError`.

    >>> RetrievalServerRetriever(url="http://127.0.0.1:8000", k=3).invoke("refund policy")  # doctest: +SKIP
    """

    url: str
    api_key: str | None = None
    k: int = 4
    mode: Literal["dense", "keyword", "hybrid"] = "dense"
    where: dict[str, Any] | None = None
    min_score: float | None = None
    alpha: float | None = None
    timeout: float = 30

    def _request(self, query: str, overrides: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
        """The search URL, body and headers for ``query`` with an invoke's ``overrides``."""
        overrides.pop("verbose", None)  # LangChain passes invoke's own keyword through too
        unknown = sorted(set(overrides) - set(_OVERRIDES))
        if unknown:
            raise ArgumentError(f"unknown search argument {', '.join(unknown)}: a search takes {', '.join(_OVERRIDES)}")
        options = {name: overrides.get(name, getattr(self, name)) for name in _OVERRIDES}
        payload = search_payload(query, options.pop("k"), **options)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return self.url.rstrip("/") + "/v1/search", payload, headers

    def _documents(self, response: httpx.Response) -> list[Document]:
        url = self.url.rstrip("/")
        if response.status_code == 404:  # a search never answers 404: another service, or a wrong path
            raise ServiceError(f"{url}/v1/search was not found: is {url} a `retrieve serve` service?")
        hint = ("pass its key as api_key= (the service's RETRIEVE_API_KEY)" if self.api_key is None
                else "api_key= is not its key (the service's RETRIEVE_API_KEY)")
        body = read_answer(url, "/v1/search", response, key_hint=hint)
        return [Document(page_content=r["text"], metadata={**(r.get("metadata") or {}), "score": r["score"],
                                                           "id": r["id"]}, id=str(r["id"]))
                for r in body["results"]]

    def _unreachable(self, exc: httpx.HTTPError) -> Exception:
        return unreachable(self.url.rstrip("/"), exc, "is `retrieve serve` running there (and is url= right)?")

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **kwargs: Any) -> list[Document]:
        url, payload, headers = self._request(query, kwargs)
        try:
            with httpx.Client(headers=headers, timeout=self.timeout) as client:
                response = client.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return self._documents(response)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **kwargs: Any) -> list[Document]:
        url, payload, headers = self._request(query, kwargs)
        try:
            async with httpx.AsyncClient(headers=headers, timeout=self.timeout) as client:
                response = await client.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        return self._documents(response)


class RetrievalServerVectorStore(VectorStore):
    """A LangChain vector store over a running ``retrieve serve`` at ``url``, asked over
    HTTP: nothing of the store is loaded here.

    With an ``embedding``, texts and queries are embedded here and sent as vectors, so
    the service's store must be one of the caller's vectors, model ``external:NAME:DIM``
    with DIM the embeddings' dimension (docs/http.md); without one, the service embeds
    texts and queries with its own model. ``api_key`` is the service's key (None for a
    service without one). Scores are cosine similarities, as the service's.

    The service's errors are raised as the :class:`~retrieval.errors.RetrievalError` a
    local call raises, in one line; a refused key or an unreachable service as
    :class:`~retrieval.errors.ServiceError`. The async methods run the sync ones in
    LangChain's default executor.
    """

    def __init__(self, url: str, embedding: Embeddings | None = None, *, api_key: str | None = None,
                 timeout: float = 60, batch_size: int = 256) -> None:
        self.url = url.rstrip("/")
        self._embedding = embedding
        self.api_key = api_key
        self.timeout = timeout
        self.batch_size = batch_size

    @property
    def embeddings(self) -> Embeddings | None:
        return self._embedding

    # -- HTTP -------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              missing_ok: bool = False) -> dict[str, Any] | None:
        """The service's JSON answer to ``method path`` (None for a 404 when ``missing_ok``)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            with httpx.Client(headers=headers, timeout=self.timeout) as client:
                response = client.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc, "is `retrieve serve` running there (and is url= right)?") from exc
        if missing_ok and response.status_code == 404 and _error_code(response) == "not_found":
            return None
        hint = ("pass its key as api_key= (the service's RETRIEVE_API_KEY)" if self.api_key is None
                else "api_key= is not its key (the service's RETRIEVE_API_KEY)")
        return read_answer(self.url, path.split("?")[0], response, key_hint=hint)

    # -- writes -----------------------------------------------------------------------

    def add_texts(self, texts: Iterable[str], metadatas: list[dict[Any, Any]] | None = None, *,
                  ids: list[str] | None = None, **kwargs: Any) -> list[str]:
        """Store texts through ``POST /v1/documents`` (upserts by id; a missing id gets a
        uuid4), in batches of ``batch_size``; returns their ids. A repeated id is stored
        once, its last text winning."""
        keys, docs = _upserts(texts, metadatas, ids)
        if docs and self._embedding is not None:
            vectors = _embedded(self._embedding, [d["text"] for d in docs], type(self._embedding).__name__)
            for doc, vector in zip(docs, vectors):
                doc["vector"] = vector.tolist()
        for start in range(0, len(docs), self.batch_size):
            self._call("POST", "/v1/documents", {"documents": docs[start:start + self.batch_size]})
        return keys

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents by id (missing ones are no error); True. Without ids, False:
        the service deletes documents by id only."""
        if ids is None:
            return False
        for doc_id in ids:
            self._call("DELETE", "/v1/documents/" + _quoted(doc_id), missing_ok=True)
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in the order given; missing ones are left out."""
        found = [self._call("GET", "/v1/documents/" + _quoted(doc_id), missing_ok=True) for doc_id in ids]
        return [Document(page_content=d["text"], metadata=dict(d.get("metadata") or {}), id=str(d["id"]))
                for d in found if d is not None]

    # -- searches ---------------------------------------------------------------------

    def similarity_search(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                          **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter, **kwargs)]

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest ``query`` with their cosine similarity, best first
        (by its vector when this store has embeddings, else by the text)."""
        if self._embedding is not None:
            return self.similarity_search_with_score_by_vector(list(self._embedding.embed_query(query)), k,
                                                               filter=filter, **kwargs)
        return self._search(search_payload(query, k, where=filter, **kwargs))

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter=filter, **kwargs)]

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4,
                                               filter: dict[str, Any] | None = None,
                                               **kwargs: Any) -> list[tuple[Document, float]]:
        """The ``k`` documents nearest a query vector, with their cosine similarity, best first."""
        payload = search_payload(None, k, where=filter, **kwargs)
        payload["vector"] = [float(x) for x in embedding]
        return self._search(payload)

    def _search(self, payload: dict[str, Any]) -> list[tuple[Document, float]]:
        body = self._call("POST", "/v1/search", payload)
        assert body is not None
        return [(Document(page_content=r["text"], metadata=dict(r.get("metadata") or {}), id=str(r["id"])),
                 float(r["score"])) for r in body["results"]]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        # Scores are cosine similarities already: LangChain's relevance for cosine.
        return _identity

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings | None = None,
                   metadatas: list[dict[Any, Any]] | None = None, *, ids: list[str] | None = None,
                   url: str | None = None, api_key: str | None = None,
                   **kwargs: Any) -> RetrievalServerVectorStore:
        """A store over the service at ``url`` (its key ``api_key``) that holds ``texts``
        now, embedded by ``embedding`` (None: by the service)."""
        if url is None:
            raise ArgumentError("from_texts needs url=, the address of a running `retrieve serve`")
        vs = cls(url, embedding, api_key=api_key, **kwargs)
        vs.add_texts(texts, metadatas, ids=list(ids) if ids is not None else None)
        return vs


def _quoted(doc_id: str) -> str:
    from urllib.parse import quote

    return quote(str(doc_id), safe="")


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body.get("error")) if isinstance(body, dict) else None


def _upserts(texts: Iterable[str], metadatas: list[dict[Any, Any]] | None,
             ids: list[str] | None) -> tuple[list[str], list[dict[str, Any]]]:
    """``add_texts``' arguments as (the id of each text, the documents to upsert): a
    missing id (None or empty) gets a uuid4, and a repeated id is one document, its last
    text and metadata winning, as upserts in turn would leave it."""
    texts = list(texts)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ArgumentError(f"{len(metadatas)} metadatas for {len(texts)} texts")
    if ids is not None and len(ids) != len(texts):
        raise ArgumentError(f"{len(ids)} ids for {len(texts)} texts")
    given: list[Any] = list(ids) if ids is not None else [None] * len(texts)
    keys = [str(i) if i is not None and i != "" else str(uuid.uuid4()) for i in given]
    last = {key: n for n, key in enumerate(keys)}
    docs = [{"id": keys[n], "text": texts[n], "metadata": dict(metadatas[n]) if metadatas else {}}
            for n in sorted(last.values())]
    return keys, docs


def _embedded(embedding: Embeddings, texts: list[str], name: str) -> np.ndarray:
    """``embedding``'s vectors of ``texts``, one row each, or a one-line error naming it."""
    vectors = np.asarray(embedding.embed_documents(texts), dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) != len(texts):
        raise ArgumentError(f"{name}.embed_documents returned {vectors.shape} for {len(texts)} texts")
    return vectors
