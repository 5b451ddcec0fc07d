"""A LlamaIndex vector store over a local store: :class:`RetrievalVectorStore`.

LlamaIndex's nodes map to the store's documents one to one: ``node_id`` is the id, the
node's content (without its metadata) the text, and its metadata the metadata, with
what LlamaIndex needs to rebuild the node beside it: ``ref_doc_id`` (the source
document's id, or null), ``_node_content`` (the node as JSON, without its text) and
``_node_type``. Metadata filters (``MetadataFilters``: ==, !=, >, >=, <, <=, in, nin,
AND/OR/NOT, nested) become the store's filter language (docs/search.md); an operator
without a counterpart there is refused with :class:`~retrieval.errors.ArgumentError`.
``stores_text`` is true: nodes come back from the store, not from LlamaIndex's docstore.

Whose vectors, fixed when the store is made:

* the caller's, when ``embed_model`` (LlamaIndex's embedding model, named by its class)
  or ``embedding_name`` is given, or the store's ``model`` setting is
  ``external:NAME:DIM``, or its index already holds a caller's vectors: each node
  brings its ``embedding``, kept under the model ``external:NAME:DIM``
  (:mod:`retrieval.embed.external`), and queries bring ``query_embedding``;
* else the store's own encoder (the ``model`` setting): nodes are stored as text (an
  ``embedding`` LlamaIndex computed is not used) and embedded by the store, and queries
  are texts (``is_embedding_query`` is false, so LlamaIndex's retrievers pass
  ``query_str``); ``VectorStoreQueryMode.HYBRID`` is the store's hybrid search.

``TEXT_SEARCH`` and ``SPARSE`` queries are the store's keyword search, whoever's vectors
it holds. Similarities are cosine similarities (dense), keyword ranks or fused scores.
The async methods are LlamaIndex's defaults, which call the sync ones.

Needs ``llama-index-core`` (``pip install retrieval[llamaindex]``); nothing else in the
package imports this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import PrivateAttr

from retrieval.embed.external import PREFIX, ExternalEncoder, external_model, is_external
from retrieval.errors import ArgumentError, ModelMismatchError
from retrieval.filters import parse as parse_filter
from retrieval.retriever import Retriever
from retrieval.search.hits import Hit
from retrieval.store.records import StoredDocument

__all__ = ["RetrievalVectorStore", "to_where"]

REF_DOC_ID = "ref_doc_id"
_OPERATORS = {
    FilterOperator.EQ: "$eq", FilterOperator.NE: "$ne", FilterOperator.GT: "$gt", FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt", FilterOperator.LTE: "$lte", FilterOperator.IN: "$in", FilterOperator.NIN: "$nin",
}
_KEYWORD_MODES = (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE)


class RetrievalVectorStore(BasePydanticVectorStore):
    """A :class:`~retrieval.Retriever` as a LlamaIndex vector store (see the module doc).

    ``store`` is a Retriever, or a folder (a store in it: ``retrieval.db`` and
    ``index/``, opened with ``settings`` as overrides); None opens the configured store
    (``config.yaml``, ``RETRIEVE_*``). ``embed_model`` (only its class name is used) or
    ``embedding_name`` names the caller's vectors.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    embedding_name: str | None = None

    _retriever: Retriever = PrivateAttr()
    _external: ExternalEncoder | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, store: Retriever | str | os.PathLike[str] | None = None, *,
                 embed_model: BaseEmbedding | None = None, embedding_name: str | None = None,
                 **settings: Any) -> None:
        name = embedding_name or (type(embed_model).__name__ if embed_model is not None else None)
        if isinstance(store, Retriever):
            if settings:
                raise ArgumentError("settings apply to a store opened here, not to a Retriever passed in")
            retriever = store
        elif store is None:
            retriever = Retriever.from_settings(**settings)
        else:
            retriever = Retriever.open(Path(store), **settings)
        super().__init__(stores_text=True)
        self.embedding_name = name
        self._retriever = retriever
        self.is_embedding_query = (name is not None or is_external(retriever.settings.encoder.model)
                                   or self._indexed() is not None)

    @classmethod
    def class_name(cls) -> str:
        return "RetrievalVectorStore"

    @property
    def client(self) -> Retriever:
        """The Retriever underneath."""
        return self._retriever

    @property
    def retriever(self) -> Retriever:
        return self._retriever

    @property
    def callers_vectors(self) -> bool:
        """Whether nodes and queries bring their vectors (else the store embeds texts)."""
        return self.is_embedding_query

    def close(self) -> None:
        self._retriever.close()

    # -- the caller's vectors ---------------------------------------------------------

    def _indexed(self) -> ExternalEncoder | None:
        """The external encoder of the caller's vectors the index holds, if it holds any."""
        manifest = self._retriever.index_store.read_manifest()
        if manifest is None or not manifest.model_key.startswith(PREFIX):
            return None
        return ExternalEncoder(manifest.model_key[len(PREFIX):].split("|")[0], manifest.dim)

    def _use(self, dim: int | None) -> ExternalEncoder | None:
        """The external encoder of this store's vectors (with ``dim`` dimensions when
        given), installed on the retriever; None while nothing says which it is."""
        with self._lock:
            if self._external is None:
                configured = self._retriever.settings.encoder.model
                indexed = self._indexed()
                if self.embedding_name is not None and dim is not None:
                    self._external = ExternalEncoder.of(external_model(self.embedding_name, dim))
                elif self.embedding_name is None and is_external(configured):
                    self._external = ExternalEncoder.of(configured)
                elif indexed is not None and (self.embedding_name is None or indexed.name
                                              == ExternalEncoder.of(external_model(self.embedding_name, 1)).name):
                    self._external = indexed
                else:
                    return None
                self._retriever.encoder = self._external
            if dim is not None and self._external.dim != dim:
                raise ModelMismatchError(f"{dim}-dimensional vectors, but this store holds {self._external.name}'s "
                                         f"{self._external.dim}-dimensional ones")
            return self._external

    # -- writes -----------------------------------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes (upserts by ``node_id``: a stored id is replaced) and publish them;
        returns their ids. With the caller's vectors every node needs its ``embedding``.
        ``kwargs`` go to :meth:`retrieval.Retriever.ingest`."""
        docs: dict[str, dict[str, Any]] = {}  # a repeated id: its last node, as upserts in turn
        for node in nodes:
            doc: dict[str, Any] = {"id": node.node_id, "text": node.get_content(metadata_mode=MetadataMode.NONE),
                                   "metadata": _metadata(node)}
            if self.callers_vectors:
                if node.embedding is None:
                    raise ArgumentError(f"node {node.node_id!r} has no embedding, and this store keeps the caller's "
                                        "vectors: embed the nodes first (a VectorStoreIndex does)")
                vector = np.asarray(node.embedding, dtype=np.float64)
                self._use(len(vector))
                doc["vector"] = vector
            docs.pop(node.node_id, None)
            docs[node.node_id] = doc
        if docs:
            self._retriever.ingest(list(docs.values()), **kwargs)
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        self._delete([d.external_id for d in self._documents({REF_DOC_ID: ref_doc_id})], **delete_kwargs)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None,
                     **delete_kwargs: Any) -> None:
        """Delete the nodes with these ids that match ``filters`` (all of them: no
        filters; the matching ones: no ids)."""
        if node_ids is None and filters is None:
            raise ArgumentError("delete_nodes needs node_ids or filters; clear() deletes every node")
        if node_ids is not None and filters is None:
            self._delete(list(node_ids), **delete_kwargs)
        else:
            self._delete([d.external_id for d in self._documents(to_where(filters), node_ids)], **delete_kwargs)

    def clear(self) -> None:
        """Delete every node in the store."""
        self._delete([d.external_id for d in self._documents(None)])

    def _delete(self, ids: list[str], **kwargs: Any) -> None:
        if ids:
            if self.callers_vectors:
                self._use(None)  # the sync that publishes the delete needs the store's model
            self._retriever.delete(ids, **kwargs)

    # -- reads ------------------------------------------------------------------------

    def get_nodes(self, node_ids: list[str] | None = None,
                  filters: MetadataFilters | None = None) -> list[BaseNode]:
        """The stored nodes with these ids (in that order; missing ones are left out) that
        match ``filters``; without ids, every node that matches them."""
        if node_ids is not None and filters is None:
            found = self._retriever.store.get_many([str(i) for i in node_ids])
            return [_node(d.external_id, d.text, d.metadata) for d in (found.get(str(i)) for i in node_ids)
                    if d is not None]
        return [_node(d.external_id, d.text, d.metadata) for d in self._documents(to_where(filters), node_ids)]

    def _documents(self, where: Any, ids: Sequence[str] | None = None) -> list[StoredDocument]:
        """The stored documents matching ``where`` (every one: None), among ``ids`` when
        given (in their order), else in the order they were stored."""
        f = parse_filter(where)
        if ids is not None:
            found = self._retriever.store.get_many([str(i) for i in ids])
            if f is not None:
                with self._retriever.store.read() as snap:
                    keep = set(snap.matching_ids(f).tolist())
                found = {key: d for key, d in found.items() if d.id in keep}
            return [found[i] for i in dict.fromkeys(str(i) for i in ids) if i in found]
        with self._retriever.store.read() as snap:
            internal = snap.all_ids() if f is None else snap.matching_ids(f)
            return sorted(snap.documents(internal.tolist()).values(), key=lambda d: d.id)

    # -- queries ----------------------------------------------------------------------

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The top ``similarity_top_k`` nodes for the query (see the module doc), best
        first. ``doc_ids`` keeps the nodes of those source documents, ``node_ids`` those
        nodes (scored exactly from their stored vectors); ``kwargs`` go to the search
        (``min_score``...)."""
        where = to_where(query.filters)
        if query.doc_ids is not None:
            docs = {REF_DOC_ID: {"$in": [str(d) for d in query.doc_ids]}}
            where = docs if where is None else {"$and": [where, docs]}
        k = query.similarity_top_k
        mode = query.mode
        if mode in _KEYWORD_MODES:
            hits = self._search_text(query, query.sparse_top_k or k, where, "keyword", **kwargs)
        elif mode == VectorStoreQueryMode.HYBRID:
            if self.callers_vectors:
                raise ArgumentError("hybrid search embeds the query with the store's own model, and this store "
                                    "keeps the caller's vectors: use the default mode, or text_search")
            hits = self._search_text(query, query.hybrid_top_k or k, where, "hybrid", alpha=query.alpha, **kwargs)
        elif mode != VectorStoreQueryMode.DEFAULT:
            raise ArgumentError(f"query mode {mode.value!r} is not supported; use default, hybrid or text_search")
        elif query.node_ids:  # (an empty list, as a VectorStoreIndex's retriever passes, restricts nothing)
            hits = self._among(query, query.node_ids, k, where)
        elif query.query_embedding is not None:
            hits = self._search_vector(query.query_embedding, k, where, **kwargs)
        elif self.callers_vectors:
            raise ArgumentError("this store keeps the caller's vectors: pass query_embedding")
        else:
            hits = self._search_text(query, k, where, "dense", **kwargs)
        return VectorStoreQueryResult(nodes=[_node(h.id, h.text, h.metadata) for h in hits],
                                      similarities=[h.score for h in hits], ids=[h.id for h in hits])

    def _among(self, query: VectorStoreQuery, node_ids: Sequence[str], k: int, where: Any) -> list[Hit]:
        """The ``k`` nodes among ``node_ids`` matching ``where`` nearest the query, scored
        exactly from their stored vectors."""
        if query.query_embedding is not None:
            vector = np.asarray(query.query_embedding, dtype=np.float32)
            if self.callers_vectors:
                self._use(len(vector))
        elif query.query_str and not self.callers_vectors:
            vector = self._retriever.encoder.encode_queries([query.query_str])[0]
        else:
            raise ArgumentError("a query restricted to node_ids needs query_embedding"
                                + ("" if self.callers_vectors else " or query_str"))
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ArgumentError("the query embedding has no direction (all zeros, NaN or infinite)")
        docs = self._documents(where, node_ids)
        stored = self._retriever.document_vectors([d.external_id for d in docs])
        scored = [Hit(id=d.external_id, score=float(np.dot(stored[d.external_id], vector)) / norm, text=d.text,
                      metadata=d.metadata) for d in docs if d.external_id in stored]
        return sorted(scored, key=lambda h: -h.score)[:k]

    def _search_text(self, query: VectorStoreQuery, k: int, where: Any, mode: str, **kwargs: Any) -> list[Hit]:
        if not query.query_str:
            raise ArgumentError(f"a {mode} search needs query_str")
        return self._retriever.search(query.query_str, k, where=where, mode=mode, **kwargs)

    def _search_vector(self, embedding: Sequence[float], k: int, where: Any, **kwargs: Any) -> list[Hit]:
        vector = np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        norm = float(np.linalg.norm(vector))
        if not np.isfinite(norm) or norm == 0.0:
            raise ArgumentError("the query embedding has no direction (all zeros, NaN or infinite)")
        if self.callers_vectors:
            self._use(vector.shape[1])
        return self._retriever.search_vectors(vector / norm, k, where=where, **kwargs)[0]


def to_where(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """LlamaIndex's metadata filters in the store's filter language (None: no filter)."""
    if filters is None or not filters.filters:
        return None
    parts = [to_where(f) if isinstance(f, MetadataFilters) else _condition(f) for f in filters.filters]
    clauses = [p for p in parts if p is not None]
    condition = filters.condition or FilterCondition.AND
    if not clauses:
        return None
    if condition == FilterCondition.AND:
        return clauses[0] if len(clauses) == 1 else {"$and": clauses}
    either = clauses[0] if len(clauses) == 1 else {"$or": clauses}
    if condition == FilterCondition.OR:
        return either
    if condition == FilterCondition.NOT:  # LlamaIndex's NOT: none of the filters matches
        return {"$not": either}
    raise ArgumentError(f"filter condition {condition!r} is not supported; use and, or or not")


def _condition(f: MetadataFilter) -> dict[str, Any]:
    op = _OPERATORS.get(f.operator)
    if op is None:
        raise ArgumentError(f"filter on {f.key!r}: operator {f.operator.value!r} has no counterpart in the store's "
                            "filter language; use ==, !=, >, >=, <, <=, in or nin")
    return {f.key: {op: f.value}}


def _metadata(node: BaseNode) -> dict[str, Any]:
    """A node's metadata (as JSON), and what LlamaIndex needs to rebuild the node."""
    full = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
    metadata = dict(node.model_dump(mode="json").get("metadata") or {})
    metadata[REF_DOC_ID] = node.ref_doc_id
    metadata["_node_content"] = full["_node_content"]
    metadata["_node_type"] = full["_node_type"]
    return metadata


def _node(node_id: str, text: str, metadata: dict[str, Any]) -> BaseNode:
    """The node stored as a document; a document stored otherwise (``retrieve ingest``)
    becomes a TextNode of its text and metadata."""
    if "_node_content" in metadata:
        return metadata_dict_to_node(metadata, text=text)
    return TextNode(id_=node_id, text=text, metadata=dict(metadata))
