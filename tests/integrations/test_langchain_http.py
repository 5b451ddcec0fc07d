"""The LangChain retriever over a running `retrieve serve`: LangChain's own standard
retriever tests, and the adapter's other promises, against a real server subprocess
(the test encoder, hash-384: the queries share words with the documents they find)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import RetrieversIntegrationTests

from retrieval.errors import ServiceError
from retrieval.integrations.langchain import RetrievalServerRetriever
from tests.fixtures.server import ServeProcess, free_port

# The standard async test is a coroutine without a marker (see test_langchain.py).
pytestmark = [pytest.mark.asyncio,
              pytest.mark.filterwarnings("ignore:The test <Function .* is marked with '@pytest.mark.asyncio'")]

KEY = "lc-key-0123456789abcdef"
QUERY = "trail running shoes"
# Ten documents sharing the query's words (so that any k up to 10 is filled), of two kinds.
DOCS = [{"id": f"shoe-{i}", "text": f"Trail running shoes, model {i}: grip and cushioning for long runs.",
         "metadata": {"kind": "trail" if i % 2 else "road", "n": i}} for i in range(10)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("lc-served"), api_key=KEY)
    srv.start()
    try:
        seeded = httpx.post(srv.url + "/v1/documents", json={"documents": DOCS}, headers=srv.headers, timeout=120)
        assert seeded.status_code == 200, seeded.text
        yield srv
    finally:
        srv.stop()


class TestRetrievalServerRetriever(RetrieversIntegrationTests):
    """Every standard test, sync and async (the async one through httpx's AsyncClient)."""

    @pytest.fixture(autouse=True)
    def _served(self, server: ServeProcess) -> None:
        self.url = server.url

    @property
    def retriever_constructor(self) -> type[RetrievalServerRetriever]:
        return RetrievalServerRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"url": self.url, "api_key": KEY}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def test_documents_carry_ids_scores_and_metadata(server: ServeProcess) -> None:
    docs = RetrievalServerRetriever(url=server.url, api_key=KEY, k=3).invoke(QUERY)
    assert len(docs) == 3 and all(isinstance(d, Document) for d in docs)
    assert all(d.id and d.id.startswith("shoe-") and d.metadata["id"] == d.id for d in docs)
    assert docs[0].page_content.startswith("Trail running shoes")
    assert docs[0].metadata["score"] >= docs[1].metadata["score"] >= docs[2].metadata["score"]
    assert docs[0].metadata["n"] == int(docs[0].id.split("-")[1])


async def test_filters_and_modes_pass_through(server: ServeProcess) -> None:
    trail = RetrievalServerRetriever(url=server.url + "/", api_key=KEY, k=10, where={"kind": "trail"})
    docs = trail.invoke(QUERY)
    assert len(docs) == 5 and {d.metadata["kind"] for d in docs} == {"trail"}
    # An invoke's where, k and mode override the constructor's; async too.
    road = await trail.ainvoke(QUERY, where={"kind": "road"}, k=2, mode="hybrid")
    assert len(road) == 2 and {d.metadata["kind"] for d in road} == {"road"}
    hybrid = RetrievalServerRetriever(url=server.url, api_key=KEY, mode="hybrid", k=4).invoke("cushioning model 7")
    assert len(hybrid) == 4 and hybrid[0].id == "shoe-7"
    keyword = RetrievalServerRetriever(url=server.url, api_key=KEY, mode="keyword").invoke("model 3", k=1)
    assert [d.id for d in keyword] == ["shoe-3"]
    scores = [d.metadata["score"] for d in RetrievalServerRetriever(url=server.url, api_key=KEY).invoke(QUERY)]
    floor = (scores[0] + scores[-1]) / 2 if scores[0] > scores[-1] else scores[0]
    above = RetrievalServerRetriever(url=server.url, api_key=KEY, min_score=floor).invoke(QUERY)
    assert 1 <= len(above) <= 4 and all(d.metadata["score"] >= floor for d in above)


def one_line(exc: pytest.ExceptionInfo[Exception]) -> str:
    message = str(exc.value)
    assert "\n" not in message and "Traceback" not in message
    return message


async def test_errors_are_one_line(server: ServeProcess) -> None:
    from retrieval.errors import ArgumentError
    from retrieval.filters import FilterError

    wrong = RetrievalServerRetriever(url=server.url, api_key="not-the-key")
    with pytest.raises(ServiceError) as exc:
        wrong.invoke(QUERY)
    assert "refused the API key" in one_line(exc) and "api_key" in str(exc.value)
    with pytest.raises(ServiceError) as exc:
        await RetrievalServerRetriever(url=server.url).ainvoke(QUERY)
    assert "refused the API key" in one_line(exc) and "pass its key as api_key=" in str(exc.value)

    retriever = RetrievalServerRetriever(url=server.url, api_key=KEY)
    with pytest.raises(FilterError) as exc:
        retriever.invoke(QUERY, where={"kind": {"$nope": 1}})
    assert "unknown operator" in one_line(exc)
    with pytest.raises(ArgumentError) as exc:
        retriever.invoke(QUERY, k=0)
    one_line(exc)
    with pytest.raises(ArgumentError, match="unknown search argument kk"):
        retriever.invoke(QUERY, kk=3)


async def test_a_server_not_running_is_one_line() -> None:
    down = RetrievalServerRetriever(url=f"http://127.0.0.1:{free_port()}", timeout=5)
    with pytest.raises(ServiceError) as exc:
        down.invoke(QUERY)
    assert "cannot reach the retrieval service" in one_line(exc) and "retrieve serve" in str(exc.value)
    with pytest.raises(ServiceError) as exc:
        await down.ainvoke(QUERY)
    assert "cannot reach the retrieval service" in one_line(exc)


def test_a_url_that_is_not_the_service(server: ServeProcess) -> None:
    with pytest.raises(ServiceError) as exc:
        RetrievalServerRetriever(url=server.url + "/nothing-here", api_key=KEY).invoke(QUERY)
    assert "retrieve serve" in one_line(exc)


def test_the_docs_example_runs(server: ServeProcess, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import re

    page = (Path(__file__).parents[2] / "docs" / "langchain.md").read_text()
    section = page.split("## Over HTTP: a retriever for a running service", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    monkeypatch.setenv("RETRIEVE_API_KEY", KEY)
    exec(compile(code.group(1).replace("http://127.0.0.1:8000", server.url), "docs/langchain.md", "exec"), {})
    expected = re.findall(r"# (.+)$", code.group(1), re.M)[1:]  # the first comment says what runs
    assert capsys.readouterr().out.splitlines() == expected
