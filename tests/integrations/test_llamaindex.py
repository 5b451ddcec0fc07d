"""The LlamaIndex vector store under a real VectorStoreIndex, and its other promises."""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from retrieval.errors import ArgumentError
from retrieval.integrations.llamaindex import RetrievalVectorStore
from tests.integrations.examples import docs_example, imported_by_plain_use, promised

DIM = 32


class BagOfWords(BaseEmbedding):
    """Meaning-free, stable vectors: each word counts in one of 31 dimensions (by its
    CRC-32), and a constant last one keeps a text without words off zero. A query that
    shares words with a text is near it."""

    @classmethod
    def class_name(cls) -> str:
        return "BagOfWords"

    @staticmethod
    def vector(text: str) -> list[float]:
        out = [0.0] * DIM
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            out[zlib.crc32(word.encode()) % (DIM - 1)] += 1.0
        out[-1] = 0.5
        return out

    def _get_query_embedding(self, query: str) -> list[float]:
        return self.vector(query)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self.vector(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self.vector(text)


CATALOG = [
    ("d1", "Running shoes with thick cushioning", {"kind": "shoes", "price": 120, "brand": "acme"}),
    ("d2", "A linen shirt for hot summer days", {"kind": "shirt", "price": 40, "brand": "zenith"}),
    ("d3", "Trail running shoes for rocky paths", {"kind": "shoes", "price": 90, "brand": "zenith"}),
]


def _index(store: RetrievalVectorStore, embed_model: BaseEmbedding | None = None) -> Any:
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    docs = [Document(id_=i, text=text, metadata=meta) for i, text, meta in CATALOG]
    return VectorStoreIndex.from_documents(
        docs, storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model or BagOfWords(),
        transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0, tokenizer=str.split)])


def _where(*filters: MetadataFilter | MetadataFilters, condition: str = "and") -> MetadataFilters:
    return MetadataFilters(filters=list(filters), condition=FilterCondition(condition))


def _sources(store: RetrievalVectorStore, filters: MetadataFilters, k: int = 3) -> list[str]:
    result = store.query(VectorStoreQuery(query_embedding=BagOfWords.vector("shoes shirt"), similarity_top_k=k,
                                          filters=filters))
    return sorted(n.ref_doc_id or "" for n in result.nodes or [])


@pytest.mark.both_databases
def test_a_vector_store_index_retrieves_nodes_intact(make_retriever: Callable[..., Any]) -> None:
    store = RetrievalVectorStore(make_retriever(), embed_model=BagOfWords())
    index = _index(store)
    hits = index.as_retriever(similarity_top_k=2).retrieve("trail shoes for rocky paths")
    assert len(hits) == 2 and hits[0].node.ref_doc_id == "d3"
    assert hits[0].node.get_content() == "Trail running shoes for rocky paths"
    assert hits[0].node.metadata == {"kind": "shoes", "price": 90, "brand": "zenith"}
    assert hits[0].score == pytest.approx(max(h.score or 0.0 for h in hits)) and hits[0].score <= 1.0 + 1e-6
    assert store.retriever.encoder.model_key == f"external:BagOfWords|{DIM}|caller"
    stored = store.retriever.get(hits[0].node.node_id)
    assert stored.text == "Trail running shoes for rocky paths" and stored.metadata["ref_doc_id"] == "d3"

    index.delete_ref_doc("d3")  # the store's delete(ref_doc_id)
    left = index.as_retriever(similarity_top_k=3).retrieve("trail rocky paths")
    assert sorted(h.node.ref_doc_id or "" for h in left) == ["d1", "d2"]


@pytest.mark.both_databases
def test_filters_map_to_the_store_s_language(make_retriever: Callable[..., Any]) -> None:
    store = RetrievalVectorStore(make_retriever(), embed_model=BagOfWords())
    _index(store)
    eq = MetadataFilter(key="kind", value="shoes")
    assert _sources(store, _where(eq)) == ["d1", "d3"]
    assert _sources(store, _where(MetadataFilter(key="brand", value=["acme", "other"], operator=FilterOperator.IN))) \
        == ["d1"]
    assert _sources(store, _where(MetadataFilter(key="price", value=50, operator=FilterOperator.GT))) == ["d1", "d3"]
    assert _sources(store, _where(MetadataFilter(key="price", value=40, operator=FilterOperator.LTE),
                                  MetadataFilter(key="brand", value="acme"), condition="or")) == ["d1", "d2"]
    nested = _where(MetadataFilter(key="brand", value="zenith"),
                    _where(MetadataFilter(key="kind", value="shirt", operator=FilterOperator.NE),
                           MetadataFilter(key="price", value=100, operator=FilterOperator.LT), condition="and"))
    assert _sources(store, nested) == ["d3"]
    assert _sources(store, _where(eq, condition="not")) == ["d2"]
    assert _sources(store, _where(MetadataFilter(key="brand", value=["acme"], operator=FilterOperator.NIN))) \
        == ["d2", "d3"]
    with pytest.raises(ArgumentError, match="operator 'text_match' has no counterpart"):
        _sources(store, _where(MetadataFilter(key="kind", value="sho", operator=FilterOperator.TEXT_MATCH)))


def test_get_nodes_delete_nodes_and_clear(make_retriever: Callable[..., Any]) -> None:
    store = RetrievalVectorStore(make_retriever(), embed_model=BagOfWords())
    _index(store)
    every = store.get_nodes(filters=_where(MetadataFilter(key="price", value=0, operator=FilterOperator.GT)))
    assert sorted(n.ref_doc_id or "" for n in every) == ["d1", "d2", "d3"]
    ids = {n.ref_doc_id: n.node_id for n in every}
    got = store.get_nodes(node_ids=[ids["d2"], "nope", ids["d1"]])
    assert [n.ref_doc_id for n in got] == ["d2", "d1"] and got[0].get_content() == CATALOG[1][1]
    assert [n.ref_doc_id for n in store.get_nodes(node_ids=[ids["d2"], ids["d1"]],
                                                  filters=_where(MetadataFilter(key="kind", value="shoes")))] == ["d1"]
    among = store.query(VectorStoreQuery(query_embedding=BagOfWords.vector("running shoes"), similarity_top_k=1,
                                         node_ids=[ids["d2"], ids["d3"]]))
    assert among.ids == [ids["d3"]] and among.similarities is not None and 0 < among.similarities[0] < 1
    store.delete_nodes(filters=_where(MetadataFilter(key="brand", value="acme")))
    assert sorted(n.ref_doc_id or "" for n in store.get_nodes()) == ["d2", "d3"]
    store.delete("d2")
    assert [n.ref_doc_id for n in store.get_nodes()] == ["d3"]
    store.clear()
    assert store.get_nodes() == [] and store.retriever.store.count_documents() == 0
    result = store.query(VectorStoreQuery(query_embedding=BagOfWords.vector("shoes"), similarity_top_k=2))
    assert result.ids == [] and result.nodes == []


def test_a_source_document_s_nodes_are_all_deleted(make_retriever: Callable[..., Any]) -> None:
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    store = RetrievalVectorStore(make_retriever(), embedding_name="bow")
    source = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="manual")}
    nodes = [TextNode(id_=f"n{i}", text=f"part {i} of the manual", embedding=BagOfWords.vector(f"part {i}"),
                      relationships=source if i < 2 else {}) for i in range(3)]
    assert store.add(nodes) == ["n0", "n1", "n2"]
    store.delete("manual")
    assert [n.node_id for n in store.get_nodes()] == ["n2"]
    assert store.retriever.encoder.model_key == f"external:bow|{DIM}|caller"
    with pytest.raises(ArgumentError, match="has no embedding"):
        store.add([TextNode(id_="x", text="no vector")])


def test_without_embeddings_the_store_embeds(make_retriever: Callable[..., Any]) -> None:
    store = RetrievalVectorStore(make_retriever())  # hash-384 embeds
    assert not store.is_embedding_query
    store.add([TextNode(id_="a", text="running shoes with cushioning", metadata={"n": 1}),
               TextNode(id_="b", text="a linen shirt for summer", metadata={"n": 2}),
               TextNode(id_="c", text="trail running shoes", metadata={"n": 3})])
    dense = store.query(VectorStoreQuery(query_str="shoes for running", similarity_top_k=2))
    assert dense.ids is not None and dense.ids[0] in {"a", "c"} and "b" not in dense.ids
    assert dense.nodes is not None and dense.nodes[0].metadata["n"] in (1, 3)
    hybrid = store.query(VectorStoreQuery(query_str="linen shirt", similarity_top_k=1,
                                          mode=VectorStoreQueryMode.HYBRID))
    assert hybrid.ids == ["b"]
    keyword = store.query(VectorStoreQuery(query_str="trail", similarity_top_k=3,
                                           mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert keyword.ids == ["c"]
    filtered = store.query(VectorStoreQuery(query_str="shoes", similarity_top_k=3,
                                            filters=_where(MetadataFilter(key="n", value=3))))
    assert filtered.ids == ["c"]
    with pytest.raises(ArgumentError, match="query mode 'mmr' is not supported"):
        store.query(VectorStoreQuery(query_str="shoes", mode=VectorStoreQueryMode.MMR))


def test_a_vector_store_index_on_a_store_that_embeds(make_retriever: Callable[..., Any]) -> None:
    from llama_index.core import MockEmbedding

    store = RetrievalVectorStore(make_retriever())  # hash-384 embeds; MockEmbedding's vectors are not used
    index = _index(store, MockEmbedding(embed_dim=1))
    assert store.retriever.store.count_documents() == 3 and store.retriever.encoder.model_key.startswith("hash")
    hits = index.as_retriever(similarity_top_k=1).retrieve("linen shirt for summer")
    assert [h.node.ref_doc_id for h in hits] == ["d2"] and hits[0].node.metadata["brand"] == "zenith"
    hybrid = index.as_retriever(similarity_top_k=1, vector_store_query_mode="hybrid").retrieve("trail paths")
    assert [h.node.ref_doc_id for h in hybrid] == ["d3"]


def test_a_store_of_the_caller_s_vectors_refuses_text_queries(make_retriever: Callable[..., Any]) -> None:
    store = RetrievalVectorStore(make_retriever(), embed_model=BagOfWords())
    _index(store)
    with pytest.raises(ArgumentError, match="pass query_embedding"):
        store.query(VectorStoreQuery(query_str="shoes"))
    with pytest.raises(ArgumentError, match="hybrid search embeds the query"):
        store.query(VectorStoreQuery(query_str="shoes", mode=VectorStoreQueryMode.HYBRID))
    keyword = store.query(VectorStoreQuery(query_str="linen", mode=VectorStoreQueryMode.TEXT_SEARCH))
    assert keyword.nodes is not None and [n.ref_doc_id for n in keyword.nodes] == ["d2"]
    reopened = RetrievalVectorStore(make_retriever())  # no name: the index says whose vectors
    assert reopened.is_embedding_query
    result = reopened.query(VectorStoreQuery(query_embedding=BagOfWords.vector("linen shirt"), similarity_top_k=1))
    assert result.nodes is not None and result.nodes[0].ref_doc_id == "d2"


def test_the_async_methods_and_another_dimension(make_retriever: Callable[..., Any]) -> None:
    import asyncio

    from retrieval.errors import ModelMismatchError

    store = RetrievalVectorStore(make_retriever(), embed_model=BagOfWords())
    index = _index(store)

    async def use() -> list[str]:
        hits = await index.as_retriever(similarity_top_k=1).aretrieve("linen shirt")
        await store.adelete("d2")
        return [h.node.ref_doc_id or "" for h in hits] + [n.ref_doc_id or "" for n in await store.aget_nodes()]

    assert asyncio.run(use()) == ["d2", "d1", "d3"]
    with pytest.raises(ModelMismatchError, match="8-dimensional vectors"):
        store.add([TextNode(id_="x", text="short", embedding=[1.0] * 8)])
    other = RetrievalVectorStore(make_retriever(), embedding_name="Other")  # the same folder, reopened
    with pytest.raises(ModelMismatchError):
        other.add([TextNode(id_="y", text="other", embedding=[1.0] * DIM)])
    assert [n.node_id for n in other.get_nodes(node_ids=["y"])] == []


def test_importing_retrieval_does_not_import_llama_index() -> None:
    assert imported_by_plain_use("llama_index") == []


def test_the_docs_example_runs_and_prints_what_it_says(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = docs_example("llamaindex.md", "RetrievalVectorStore")
    monkeypatch.chdir(tmp_path)
    for name in ("RETRIEVE_DATABASE_URL", "RETRIEVE_INDEX_DIR", "RETRIEVE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    exec(compile(code, "docs/llamaindex.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = promised(code)
    assert printed == expected
