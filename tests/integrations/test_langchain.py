"""LangChain's own standard tests of a VectorStore, and the adapter's other promises."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from retrieval.integrations.langchain import RetrievalVectorStore
from tests.integrations.examples import docs_example, imported_by_plain_use, promised

# The standard async tests are coroutines without a marker (LangChain runs them with
# asyncio_mode auto); pytest-asyncio, a dependency of langchain-tests, runs them here
# (the mark on the sync ones is harmless, and its warning says nothing about them).
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'")]


class TestRetrievalVectorStoreStandard(VectorStoreIntegrationTests):
    """Every standard test, sync and async (the async ones through LangChain's executor)."""

    @pytest.fixture
    def vectorstore(self, make_retriever: Callable[..., Any]) -> Iterator[VectorStore]:  # type: ignore[override]
        store = RetrievalVectorStore(make_retriever(), self.get_embeddings())
        try:
            yield store
        finally:
            store.close()

    @property
    def has_async(self) -> bool:
        return True


def test_filters_scores_mmr_and_retriever(make_retriever: Callable[..., Any]) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    emb = DeterministicFakeEmbedding(size=16)
    vs = RetrievalVectorStore.from_texts(["red shoes", "red hat", "blue shoes"], emb,
                                         [{"color": "red"}, {"color": "red"}, {"color": "blue"}],
                                         ids=["1", "2", "3"], store=make_retriever())
    hits = vs.similarity_search_with_score("red hat", k=3, filter={"color": "red"})
    assert [d.id for d, _ in hits][0] == "2" and {d.id for d, _ in hits} == {"1", "2"}
    assert hits[0][1] == pytest.approx(1.0) and hits[0][1] >= hits[1][1]
    assert [d.id for d in vs.similarity_search_by_vector(emb.embed_query("blue shoes"), k=1)] == ["3"]
    mmr = vs.max_marginal_relevance_search("red hat", k=2, fetch_k=3)
    assert mmr[0].id == "2" and len({d.id for d in mmr}) == 2
    assert [d.id for d in vs.as_retriever(search_kwargs={"k": 1}).invoke("blue shoes")] == ["3"]
    assert vs.retriever.encoder.model_key == "external:DeterministicFakeEmbedding|16|caller"


def test_embeddings_of_another_dimension_are_refused(make_retriever: Callable[..., Any]) -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding

    from retrieval.errors import ModelMismatchError

    r = make_retriever()
    RetrievalVectorStore(r, DeterministicFakeEmbedding(size=6)).add_texts(["foo"], ids=["1"])
    other = RetrievalVectorStore(make_retriever(), DeterministicFakeEmbedding(size=8))  # the same folder, reopened
    with pytest.raises(ModelMismatchError, match="a store keeps one model's vectors"):
        other.add_texts(["bar"], ids=["2"])
    assert [d.id for d in other.get_by_ids(["2", "1"])] == ["1"]


def test_without_embeddings_the_store_embeds(make_retriever: Callable[..., Any]) -> None:
    vs = RetrievalVectorStore(make_retriever())  # hash-384
    ids = vs.add_texts(["running shoes", "linen pants"], [{"n": 1}, {"n": 2}])
    assert [d.page_content for d in vs.get_by_ids(ids[::-1])] == ["linen pants", "running shoes"]
    assert vs.similarity_search("shoes for running", k=1)[0].id == ids[0]
    assert vs.max_marginal_relevance_search("shoes", k=2)[0].id == ids[0]
    assert vs.delete(ids[:1]) and vs.similarity_search("shoes", k=2)[0].id == ids[1]


def test_importing_retrieval_does_not_import_langchain() -> None:
    assert imported_by_plain_use("langchain") == []


def test_the_docs_example_runs_and_prints_what_it_says(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = docs_example("langchain.md", "RetrievalVectorStore")
    monkeypatch.chdir(tmp_path)
    for name in ("RETRIEVE_DATABASE_URL", "RETRIEVE_INDEX_DIR", "RETRIEVE_MODEL"):
        monkeypatch.delenv(name, raising=False)
    exec(compile(code, "docs/langchain.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    expected = promised(code)
    assert printed == expected
