"""Bring your own embeddings over HTTP: a real `retrieve serve` on a store of model
external:NAME:DIM takes a vector with each document and searches by query vectors, and
every way of getting that wrong answers 4xx with a message that says what to do."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fixtures.server import ServeProcess

KEY = "test-key-vectors-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
DOCS = [
    {"id": "x", "text": "along x", "metadata": {"axis": "x", "n": 0}, "vector": [1.0, 0.0, 0.0, 0.0]},
    {"id": "xy", "text": "between x and y", "metadata": {"axis": "xy", "n": 1}, "vector": [1.0, 1.0, 0.0, 0.0]},
    {"id": "y", "text": "along y", "metadata": {"axis": "y", "n": 2}, "vector": [0.0, 2.0, 0.0, 0.0]},
    {"id": "z", "text": "along z", "metadata": {"axis": "z", "n": 3}, "vector": [0.0, 0.0, 3.0, 0.0]},
]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("served-vectors"), model="external:test-vectors:4", api_key=KEY)
    srv.start()
    seeded = httpx.post(srv.url + "/v1/documents", json={"documents": DOCS}, headers=AUTH, timeout=120)
    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["added"] == len(DOCS)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: ServeProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def refused(response: httpx.Response, *words: str) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    message = str(response.json()["message"])
    for word in words:
        assert word in message, message
    return message


def test_search_by_vector_is_nearest_first_with_cosine_scores(client: httpx.Client) -> None:
    query = [2.0, 1.0, 0.0, 0.0]
    response = client.post("/v1/search", json={"vector": query, "k": 4})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["xy", "x", "y", "z"]
    expected = {d["id"]: cosine(query, d["vector"]) for d in DOCS}
    for r in results:
        assert r["score"] == pytest.approx(expected[r["id"]], abs=1e-5)
    assert results[0]["metadata"] == {"axis": "xy", "n": 1}
    assert results[0]["text"] == "between x and y"


def test_search_by_vector_with_filter_and_min_score(client: httpx.Client) -> None:
    response = client.post("/v1/search", json={"vector": [2.0, 1.0, 0.0, 0.0], "k": 4, "where": {"n": {"$gte": 2}}})
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["results"]] == ["y", "z"]
    response = client.post("/v1/search", json={"vector": [1.0, 0.0, 0.0, 0.0], "k": 4, "min_score": 0.5})
    assert [r["id"] for r in response.json()["results"]] == ["x", "xy"]


def test_upsert_with_a_new_text_replaces_the_vector(client: httpx.Client) -> None:
    doc = {"id": "moving", "text": "moves from w to x", "vector": [0.0, 0.0, 0.0, 1.0]}
    assert client.post("/v1/documents", json={"documents": [doc]}).status_code == 200
    top = client.post("/v1/search", json={"vector": [0.0, 0.0, 0.0, 5.0], "k": 1}).json()["results"]
    assert top[0]["id"] == "moving" and top[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # Vectors belong to texts (by content hash): a new vector comes with a new text.
    moved = {**doc, "text": "moved to between z and w", "vector": [0.0, 0.0, 1.0, 1.0]}
    assert client.post("/v1/documents", json={"documents": [moved]}).json()["updated"] == 1
    top = client.post("/v1/search", json={"vector": [0.0, 0.0, 0.0, 5.0], "k": 1}).json()["results"]
    assert top[0]["id"] == "moving" and top[0]["score"] == pytest.approx(math.sqrt(0.5), abs=1e-5)
    assert client.delete("/v1/documents/moving").status_code == 200


def test_a_wrong_dimension_is_refused(client: httpx.Client) -> None:
    doc = {"id": "short", "text": "too short", "vector": [1.0, 2.0, 3.0]}
    message = refused(client.post("/v1/documents", json={"documents": [doc]}), "documents[0]")
    assert "4" in message and "3" in message
    refused(client.post("/v1/search", json={"vector": [1.0, 2.0, 3.0], "k": 2}), "4 dimensions")


def test_nan_is_refused(client: httpx.Client) -> None:
    body = '{"documents": [{"id": "nan", "text": "not a number", "vector": [1.0, NaN, 0.0, 0.0]}]}'
    response = client.post("/v1/documents", content=body, headers={"Content-Type": "application/json"})
    refused(response, "vector")
    response = client.post("/v1/search", content='{"vector": [NaN, 1, 0, 0], "k": 2}',
                           headers={"Content-Type": "application/json"})
    refused(response, "vector")
    assert client.get("/v1/documents/nan").status_code == 404


def test_a_zero_vector_is_refused(client: httpx.Client) -> None:
    refused(client.post("/v1/search", json={"vector": [0.0, 0.0, 0.0, 0.0], "k": 2}), "zero")


def test_a_missing_vector_is_refused_on_an_external_store(client: httpx.Client) -> None:
    message = refused(client.post("/v1/documents", json={"documents": [{"id": "bare", "text": "no vector here"}]}),
                      "documents[0]")
    assert "vector" in message
    assert client.get("/v1/documents/bare").status_code == 404


def test_query_and_vector_together_are_refused(client: httpx.Client) -> None:
    refused(client.post("/v1/search", json={"query": "along x", "vector": [1, 0, 0, 0], "k": 2}), "not both")


def test_vector_search_is_dense_only_and_takes_no_arithmetic(client: httpx.Client) -> None:
    refused(client.post("/v1/search", json={"vector": [1, 0, 0, 0], "k": 2, "mode": "hybrid"}), "dense")
    refused(client.post("/v1/search", json={"vector": [1, 0, 0, 0], "k": 2, "like": ["x"]}), "like")


def test_neither_query_nor_vector_is_refused(client: httpx.Client) -> None:
    response = client.post("/v1/search", json={"k": 2})
    assert 400 <= response.status_code < 500, response.text


def test_a_text_query_on_an_external_store_is_refused(client: httpx.Client) -> None:
    message = refused(client.post("/v1/search", json={"query": "along x", "k": 2}), "vectors come from the caller")
    assert "\n" not in message


def test_keyword_search_still_works_on_an_external_store(client: httpx.Client) -> None:
    response = client.post("/v1/search", json={"query": "between", "k": 2, "mode": "keyword"})
    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()["results"]] == ["xy"]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    srv = ServeProcess(tmp_path_factory.mktemp("served-texts"), api_key=KEY)
    srv.start()
    yield srv
    srv.stop()


def test_a_store_that_embeds_itself_refuses_vectors(text_server: ServeProcess) -> None:
    with httpx.Client(base_url=text_server.url, headers=AUTH, timeout=60) as c:
        doc: dict[str, Any] = {"id": "v", "text": "a text with a vector", "vector": [1.0, 0.0, 0.0, 0.0]}
        response = c.post("/v1/documents", json={"documents": [doc]})
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_input"
        assert "embeds texts with its own model" in response.json()["message"]
        assert c.get("/v1/documents/v").status_code == 404
        # A query vector of another dimension than the store's is refused as well.
        refused(c.post("/v1/search", json={"vector": [1.0, 0.0, 0.0, 0.0], "k": 2}), "384 dimensions")
