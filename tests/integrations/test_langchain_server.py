"""LangChain's standard tests of a VectorStore over a running `retrieve serve`, and the
server store's other promises. One server (a store of the caller's 6-d vectors, the
standard tests' DeterministicFakeEmbedding) serves the module; each test starts empty."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import httpx
import pytest
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from retrieval.errors import ServiceError
from retrieval.integrations.langchain import RetrievalServerVectorStore
from tests.fixtures.server import ServeProcess

# As in test_langchain.py: the standard async tests are coroutines without a marker.
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'")]

KEY = "test-key-langchain-server-0123"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("served-langchain"), model="external:DeterministicFakeEmbedding:6",
                       api_key=KEY)
    srv.start()
    yield srv
    srv.stop()


def emptied(server: ServeProcess) -> ServeProcess:
    """The server with every stored document deleted (through its API)."""
    with sqlite3.connect(server.folder / "retrieval.db") as db:
        ids = [row[0] for row in db.execute("SELECT external_id FROM documents")]
    RetrievalServerVectorStore(server.url, api_key=KEY).delete(ids)
    return server


class TestRetrievalServerVectorStoreStandard(VectorStoreIntegrationTests):
    """Every standard test, sync and async, against the real service."""

    @pytest.fixture
    def vectorstore(self, server: ServeProcess) -> VectorStore:  # type: ignore[override]
        return RetrievalServerVectorStore(emptied(server).url, self.get_embeddings(), api_key=KEY)

    @property
    def has_async(self) -> bool:
        return True


def test_filters_scores_and_from_texts(server: ServeProcess) -> None:
    emb = DeterministicFakeEmbedding(size=6)
    vs = RetrievalServerVectorStore.from_texts(
        ["red shoes", "red hat", "blue shoes"], emb, [{"color": "red"}, {"color": "red"}, {"color": "blue"}],
        ids=["1", "2", "3/with slash"], url=emptied(server).url, api_key=KEY)
    hits = vs.similarity_search_with_score("red hat", k=3, filter={"color": "red"})
    assert [d.id for d, _ in hits][0] == "2" and {d.id for d, _ in hits} == {"1", "2"}
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5) and hits[0][1] >= hits[1][1]
    assert [d.id for d in vs.similarity_search_by_vector(emb.embed_query("blue shoes"), k=1)] == ["3/with slash"]
    assert [d.id for d in vs.get_by_ids(["3/with slash", "nope", "1"])] == ["3/with slash", "1"]
    assert [d.id for d in vs.as_retriever(search_kwargs={"k": 1}).invoke("blue shoes")] == ["3/with slash"]
    assert vs.delete(["3/with slash", "nope"]) and vs.get_by_ids(["3/with slash"]) == []


def test_without_embeddings_the_service_is_asked_by_text(server: ServeProcess) -> None:
    vs = RetrievalServerVectorStore(emptied(server).url, api_key=KEY)
    with pytest.raises(Exception, match="vectors come from the caller"):
        vs.add_texts(["no vector"])
    with pytest.raises(Exception, match="vectors come from the caller"):
        vs.similarity_search("anything")


def test_a_wrong_key_and_an_unreachable_service_are_one_line_errors(server: ServeProcess) -> None:
    with pytest.raises(ServiceError, match="refused the API key"):
        RetrievalServerVectorStore(server.url, api_key="wrong").get_by_ids(["1"])
    with pytest.raises(ServiceError, match="cannot reach"):
        RetrievalServerVectorStore("http://127.0.0.1:9", timeout=2).get_by_ids(["1"])
    with pytest.raises(Exception, match="url="):
        RetrievalServerVectorStore.from_texts(["x"], DeterministicFakeEmbedding(size=6))
    assert httpx.get(server.url + "/healthz").status_code == 200
