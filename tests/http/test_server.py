"""`retrieve serve` driven over HTTP: the real server runs as a subprocess on a free
loopback port, against a store in a temporary folder, started once for this module.

The test process itself never loads the model: the server seeds the store through its
own API, and the checks compare what it answers. The server runs the test encoder
(hash-384): these tests are about the protocol, limits, keys and lifecycle, so the
queries share words with the documents they should find.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from click.testing import CliRunner
from hypothesis import HealthCheck, settings

from tests.conftest import HASH, SEED
from tests.fixtures.server import ServeProcess, free_port

KEY = "test-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = {"max_k": 50, "max_query_chars": 300, "max_batch": 16, "max_body_bytes": 65_536}
SEED_DOCS = [{"id": f"seed-{i}", "text": text, "metadata": {"n": i}} for i, text in enumerate(SEED)]
SHOES = "seed-1"  # the running shoes


class Server(ServeProcess):
    """The module's server: the test encoder, a key, and tight limits."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder, model=HASH, api_key=KEY, **LIMITS)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("served"))
    srv.start()
    seeded = httpx.post(srv.url + "/v1/documents", json={"documents": SEED_DOCS}, headers=AUTH, timeout=120)
    assert seeded.status_code == 200, seeded.text
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        yield c


def search(client: httpx.Client, query: str, k: int = 3, **extra: Any) -> list[dict[str, Any]]:
    response = client.post("/v1/search", json={"query": query, "k": k, **extra})
    assert response.status_code == 200, response.text
    return list(response.json()["results"])


# -- behaviour -----------------------------------------------------------------------


def test_search_answers_best_first(client: httpx.Client) -> None:
    response = client.post("/v1/search", json={"query": "running shoes for jogging", "k": 2})
    assert response.status_code == 200
    body = response.json()
    assert [r["id"] for r in body["results"]][0] == SHOES
    assert len(body["results"]) == 2
    assert body["results"][0]["score"] >= body["results"][1]["score"]
    assert body["results"][0]["metadata"] == {"n": 1}
    assert body["took_ms"] >= 0
    assert response.headers["x-request-id"]


def test_min_score_leaves_out_weak_results(client: httpx.Client) -> None:
    results = search(client, "high-performance running shoes", k=4, min_score=0.5)
    assert [r["id"] for r in results] == [SHOES]


def test_upsert_then_search_then_update(client: httpx.Client) -> None:
    doc = {"id": "tent-1", "text": "A waterproof four-person camping tent with an aluminium frame.", "metadata": {"c": "outdoor"}}
    response = client.post("/v1/documents", json={"documents": [doc]}, params={"wait": "true"})
    assert response.status_code == 200, response.text
    assert response.json()["added"] == 1 and response.json()["index_version"] and response.json()["published"]
    assert search(client, "camping tent that is waterproof", k=1)[0]["id"] == "tent-1"
    assert client.get("/v1/documents/tent-1").json() == {"id": "tent-1", "text": doc["text"], "metadata": {"c": "outdoor"}}

    again = client.post("/v1/documents", json={"documents": [doc]}).json()
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 1)
    changed = {**doc, "text": "A heavy cast-iron frying pan for camp cooking."}
    assert client.post("/v1/documents", json={"documents": [changed]}).json()["updated"] == 1
    assert search(client, "frying pan for cooking", k=1)[0]["id"] == "tent-1"


def test_upserts_follow_the_rules_of_files_and_python(client: httpx.Client) -> None:
    """NaN metadata was once stored as null without a word, and an id twice in one batch
    took the last one, where the CLI refuses both."""
    for docs, reason in [
        ([{"id": "nan-1", "text": "a lamp", "metadata": {"x": float("nan")}}], "metadata.x: nan is not valid JSON"),
        ([{"id": "inf-1", "text": "a lamp", "metadata": {"y": [float("inf")]}}], "metadata.y[0]: inf is not valid JSON"),
        ([{"id": "dup-1", "text": "one"}, {"id": "dup-1", "text": "two"}], "id 'dup-1' appears again with different text"),
    ]:
        # As Python's json module (and JavaScript's JSON.parse of some servers) writes them.
        response = client.post("/v1/documents", content=json.dumps({"documents": docs}),
                               headers={"Content-Type": "application/json"})
        body = response.json()
        assert response.status_code == 422 and body["error"] == "invalid_input", response.text
        assert reason in body["message"] and "nothing was written" in body["message"]
        assert any(reason in d["message"] for d in body["details"])
        assert "skip" not in body["message"]  # no CLI flag or Python argument to suggest over HTTP
        assert all(client.get(f"/v1/documents/{d['id']}").status_code == 404 for d in docs)
    same = client.post("/v1/documents", json={"documents": [{"id": "dup-2", "text": "one", "metadata": {"v": 1}},
                                                            {"id": "dup-2", "text": "one", "metadata": {"v": 2}}]},
                       params={"wait": "true"})
    assert same.status_code == 200 and same.json()["added"] == 1
    assert client.get("/v1/documents/dup-2").json()["metadata"] == {"v": 2}
    # The version is named as the CLI and status name it.
    assert re.fullmatch(r"g\d{10}", same.json()["index_version"])


def test_an_upsert_answers_before_its_publish_and_never_claims_it(server: Server, client: httpx.Client) -> None:
    """A small upsert answers once committed; while the index folder's sync lock is held
    no publish can run, so the answer must not name a version, and searches find it."""
    from retrieval.index.store import SYNC_LOCK
    from retrieval.sync.keeper import folder_lock

    doc = {"id": "lamp-bg", "text": "A brass reading lamp with a green glass shade."}
    with folder_lock(server.folder / "index", SYNC_LOCK):
        body = client.post("/v1/documents", json={"documents": [doc]}).json()
        assert (body["added"], body["index_version"], body["published"]) == (1, None, False)
        assert search(client, "brass reading lamp with a green glass shade", k=1)[0]["id"] == "lamp-bg"
        status = client.get("/v1/status").json()
        assert status["pending_changes"] >= 1 and status["background_publish"]["delegated"] is True
        assert client.delete("/v1/documents/lamp-bg").json() == {"id": "lamp-bg", "deleted": True}
        assert all(r["id"] != "lamp-bg" for r in search(client, "brass reading lamp with a green glass shade", k=10))
    waited = client.post("/v1/documents", json={"documents": [{**doc, "id": "lamp-2"}]}, params={"wait": "true"}).json()
    assert waited["published"] and re.fullmatch(r"g\d{10}", waited["index_version"])
    assert client.get("/v1/status").json()["pending_changes"] == 0


def test_a_long_documents_hit_carries_its_best_passage(client: httpx.Client) -> None:
    paragraphs = ["\n\n".join(" ".join(f"p{p}w{w}" for w in range(100)) for p in range(8))]
    text = paragraphs[0] + "\n\nA lantern with a folding handle and a dimmer for the tent."
    assert client.post("/v1/documents", json={"documents": [{"id": "manual", "text": text}]}).status_code == 200
    hit = search(client, "p6w10 p6w20 p6w30 p6w40", k=1)[0]
    passage = hit["passage"]
    assert hit["id"] == "manual" and passage["of"] > 1 and passage["ordinal"] > 0
    assert passage["text"] == text[passage["start"]:passage["end"]] and "p6w20" in passage["text"]
    assert "passage" not in search(client, "running shoes for jogging", k=1)[0] or \
        search(client, "running shoes for jogging", k=1)[0]["passage"] is None
    assert client.delete("/v1/documents/manual").status_code in (200, 204)


def test_delete_then_search(client: httpx.Client) -> None:
    doc = {"id": "kayak/7", "text": "An inflatable two-seat kayak with paddles and a pump."}
    assert client.post("/v1/documents", json={"documents": [doc]}).status_code == 200
    assert search(client, "kayak with paddles", k=1)[0]["id"] == "kayak/7"
    response = client.delete("/v1/documents/kayak/7")
    assert response.status_code == 200 and response.json() == {"id": "kayak/7", "deleted": True}
    assert "kayak/7" not in [r["id"] for r in search(client, "kayak with paddles", k=10)]
    gone = client.get("/v1/documents/kayak/7")
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    assert client.delete("/v1/documents/kayak/7").status_code == 404


def test_writes_from_another_process_are_synced_by_the_worker_inside(server: Server, client: httpx.Client) -> None:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    env = {k: v for k, v in server.env.items() if k.startswith("RETRIEVE_")}
    with Retriever.from_settings(load_settings(environ=env, cwd=server.folder)) as other:
        # A plain database write: no sync, no model in this process.
        other.ingest([{"id": "lamp-3", "text": "A solar-powered garden lamp that charges during the day."}], sync=False)
    # Searches see it at once (pending changes are scored exactly) ...
    assert search(client, "solar garden lamp", k=1)[0]["id"] == "lamp-3"
    # ... and the server's background worker publishes it into the index.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = httpx.get(server.url + "/readyz").json()
        if ready["pending_changes"] == 0:
            break
        time.sleep(0.1)
    assert ready["pending_changes"] == 0 and ready["sync_worker"] == "running"
    status = client.get("/v1/status").json()
    assert status["pending_changes"] == 0 and status["server"]["sync"]["running"] is True


def test_concurrent_clients_during_an_ingest(server: Server, client: httpx.Client) -> None:
    failures: list[str] = []
    tops: list[str] = []

    def searcher() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            for _ in range(12):
                r = c.post("/v1/search", json={"query": "running shoes for jogging", "k": 3})
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    tops.append(r.json()["results"][0]["id"])

    threads = [threading.Thread(target=searcher) for _ in range(4)]
    for t in threads:
        t.start()
    batches = [[{"id": f"bulk-{b}-{i}", "text": f"Notebook number {i} of series {b}, lined paper."} for i in range(8)]
               for b in range(3)]
    answers = [client.post("/v1/documents", json={"documents": batch}) for batch in batches]
    for t in threads:
        t.join()
    assert not failures
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(tops) == 48 and set(tops) == {SHOES}
    assert all(client.get(f"/v1/documents/bulk-{b}-{i}").status_code == 200 for b in range(3) for i in range(8))


def test_metrics_and_probes(server: Server, client: httpx.Client) -> None:
    search(client, "linen trousers", k=1)
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz").json()
    assert ready["ready"] is True and ready["model_loaded"] and ready["index_loaded"]
    text = client.get("/metrics").text
    assert 'retrieve_http_requests_total{method="POST",route="/v1/search",status="200"}' in text
    assert "retrieve_http_request_duration_seconds_bucket" in text
    documents = [line for line in text.splitlines() if line.startswith("retrieve_documents ")]
    assert documents and float(documents[0].split()[1]) >= len(SEED_DOCS)
    assert "retrieve_sync_lag_seconds" in text and "retrieve_index_vectors" in text
    segments = [line for line in text.splitlines() if line.startswith("retrieve_index_segments ")]
    assert segments and float(segments[0].split()[1]) >= 1  # the sync worker may merge meanwhile: no equality
    assert client.get("/v1/status").json()["segments"]
    assert "retrieve_merge_running" in text and "retrieve_index_tombstone_fraction" in text


# -- security and limits ---------------------------------------------------------------


@pytest.mark.parametrize("method,path", [("POST", "/v1/search"), ("GET", "/v1/status"), ("GET", "/metrics"),
                                         ("GET", "/openapi.json"), ("GET", "/v1/documents/seed-0"),
                                         ("DELETE", "/v1/documents/seed-0"), ("POST", "/v1/documents"),
                                         ("POST", "/v1/embeddings")])
def test_every_endpoint_but_the_probes_needs_the_key(server: Server, method: str, path: str) -> None:
    body = {"query": "shoes"} if path == "/v1/search" else {"documents": [{"id": "x", "text": "y"}]}
    kwargs: dict[str, Any] = {"json": body} if method == "POST" else {}
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": "nope"}):
        response = httpx.request(method, server.url + path, headers=headers, **kwargs)
        assert response.status_code == 401, (headers, response.text)
        error = response.json()["error"]
        if path == "/v1/embeddings":  # OpenAI's error shape, which its clients read
            error, message = error["code"], error["message"]
        else:
            message = response.json()["message"]
        assert error == "unauthorized" and "X-API-Key" in message
    assert httpx.get(server.url + "/v1/documents/seed-0", headers=AUTH).status_code == 200  # not deleted above


def test_both_key_headers_are_accepted(server: Server) -> None:
    for headers in (AUTH, {"X-API-Key": KEY}):
        assert httpx.post(server.url + "/v1/search", json={"query": "shoes"}, headers=headers).status_code == 200
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").status_code == 200


def _refusal(response: httpx.Response, status: int, limit: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert limit in body["message"] and body["request_id"]
    assert "Traceback" not in response.text


def test_limits_are_enforced_and_named(client: httpx.Client) -> None:
    _refusal(client.post("/v1/search", json={"query": "shoes", "k": LIMITS["max_k"] + 1}), 422, "max_k")
    _refusal(client.post("/v1/search", json={"query": "x" * (LIMITS["max_query_chars"] + 1)}), 422, "max_query_chars")
    docs = [{"id": f"b{i}", "text": "t"} for i in range(LIMITS["max_batch"] + 1)]
    _refusal(client.post("/v1/documents", json={"documents": docs}), 422, "max_batch")
    big = {"documents": [{"id": "big", "text": "word " * LIMITS["max_body_bytes"]}]}
    _refusal(client.post("/v1/documents", json=big), 413, "max_body_bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield b'{"documents": [{"id": "big", "text": "'
        for _ in range(LIMITS["max_body_bytes"] // 1000 + 1):
            yield b"w" * 1000
        yield b'"}]}'

    _refusal(client.post("/v1/documents", content=chunks(), headers={"Content-Type": "application/json"}), 413,
             "max_body_bytes")
    assert client.get("/v1/documents/big").status_code == 404
    # At the limits themselves, requests pass.
    assert client.post("/v1/search", json={"query": "x" * LIMITS["max_query_chars"], "k": LIMITS["max_k"]}).status_code == 200


def test_malformed_and_invalid_requests(client: httpx.Client) -> None:
    bad = client.post("/v1/search", content=b'{"query": "shoes",', headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"] == "malformed_json" and "JSON" in bad.json()["message"]
    for body, field in [({"query": "shoes", "k": "many"}, "k"), ({"k": 3}, "query"), ({"query": "   "}, "query"),
                        ({"query": "shoes", "min_score": 7}, "min_score"), ({"query": "shoes", "filter": 1}, "filter")]:
        response = client.post("/v1/search", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in response.json()["message"]
    for docs in ([], [{"id": "", "text": "t"}], [{"id": "a", "text": " "}], [{"id": "a"}], [{"id": "a", "text": "t", "metadata": [1]}]):
        assert client.post("/v1/documents", json={"documents": docs}).status_code == 422, docs
    not_json = client.post("/v1/search", content=b"query=shoes", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert not_json.status_code == 422 and "JSON object" in not_json.json()["message"]
    assert client.get("/v2/search").status_code == 404


def test_serve_refuses_a_public_address_without_a_key() -> None:
    from retrieval.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "RETRIEVE_API_KEY" in result.output and "0.0.0.0" in result.output


def test_unexpected_errors_answer_500_without_details() -> None:
    from fastapi.testclient import TestClient

    from retrieval.config import Settings
    from retrieval.http import create_app

    class Broken:
        settings = Settings()

        def search(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("secret internals at /srv/app.py line 12")

    app = create_app(Broken(), api_key=None, query_batching=False, run_sync_thread=False, warm_up=False)
    with TestClient(app, raise_server_exceptions=False) as tc:
        response = tc.post("/v1/search", json={"query": "shoes"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error" and body["request_id"] in body["message"]
    assert "secret" not in response.text and "Traceback" not in response.text
    assert response.headers["x-request-id"] == body["request_id"]


# -- filters, modes, more like this ------------------------------------------------------


def test_search_where_modes_and_similar(client: httpx.Client) -> None:
    only = search(client, "shoes", k=4, where={"n": {"$in": [0, 3]}})
    assert sorted(r["id"] for r in only) == ["seed-0", "seed-3"]
    assert search(client, "shoes", k=4, where={"n": {"$gt": 99}}) == []
    bad = client.post("/v1/search", json={"query": "shoes", "where": {"n": {"$lt": "x", "$between": 1}}})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_filter"
    assert "n.$between: unknown operator" in bad.json()["message"]
    kw = search(client, "running shoes", k=3, mode="keyword")
    assert [r["id"] for r in kw] == [SHOES] and kw[0]["mode"] == "keyword" and kw[0]["highlights"]
    assert kw[0]["snippet"][slice(*kw[0]["highlights"][0])].lower() in ("running", "shoes")
    hy = search(client, "running shoes", k=4, mode="hybrid")
    assert hy[0]["id"] == SHOES and hy[0]["keyword_rank"] == 1 and "dense_rank" in hy[0]
    assert all(r["mode"] == "hybrid" for r in hy)
    for hostile in ['"', "NEAR(", "a OR NOT", "*", "中文", "😀"]:
        for mode in ("keyword", "hybrid"):
            assert client.post("/v1/search", json={"query": hostile, "mode": mode}).status_code == 200
    assert client.post("/v1/search", json={"query": "x", "mode": "sparse"}).status_code == 422
    similar = client.get(f"/v1/documents/{SHOES}/similar", params={"k": 2}).json()["results"]
    assert len(similar) == 2 and SHOES not in [r["id"] for r in similar]
    assert client.get("/v1/documents/nope/similar").status_code == 404
    assert client.post("/v1/search", json={"k": 2}).status_code == 422  # no query and no example


def test_search_server_passes_filters_modes_and_examples(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli import cli

    monkeypatch.setenv("RETRIEVE_API_KEY", KEY)
    runner = CliRunner()
    base = ["search", "--server", server.url, "-k", "4", "--json"]
    kw = runner.invoke(cli, [*base, "running shoes", "--mode", "keyword"])
    assert kw.exit_code == 0, kw.output
    assert [r["id"] for r in json.loads(kw.output)["results"]] == [SHOES]
    filtered = runner.invoke(cli, [*base, "shoes", "--where", "n>=2", "--mode", "hybrid"])
    assert sorted(r["id"] for r in json.loads(filtered.output)["results"]) == ["seed-2", "seed-3"]
    plain = runner.invoke(cli, ["search", "--server", server.url, "running shoes", "--mode", "hybrid", "-k", "1"])
    assert SHOES in plain.output and "keyword #1" in plain.output
    like = runner.invoke(cli, [*base, "--like", SHOES])
    assert SHOES not in [r["id"] for r in json.loads(like.output)["results"]]
    similar = runner.invoke(cli, ["similar", SHOES, "--server", server.url, "-k", "2", "--json"])
    assert similar.exit_code == 0 and json.loads(similar.output)["results"] == json.loads(like.output)["results"][:2]
    bad = runner.invoke(cli, [*base, "shoes", "--where", '{"n": {"$nope": 1}}'])
    assert bad.exit_code == 2 and "n.$nope: unknown operator" in bad.output


# -- the CLI against the service -------------------------------------------------------


def test_search_server_prints_like_a_local_search(server: Server, client: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli import cli
    from retrieval.cli.search import print_hits
    from retrieval.search.hits import Hit

    monkeypatch.setenv("RETRIEVE_API_KEY", KEY)
    expected_hits = [Hit.from_json(r) for r in search(client, "running shoes for jogging", k=2)]
    runner = CliRunner()
    with runner.isolation() as (out, _err, *_):
        print_hits(expected_hits)
        expected = out.getvalue().decode()
    result = runner.invoke(cli, ["search", "--server", server.url, "running shoes for jogging", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert result.output == expected and SHOES in result.output

    monkeypatch.setenv("RETRIEVE_SERVER", server.url)
    as_json = runner.invoke(cli, ["search", "running shoes for jogging", "-k", "2", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output)["results"] == [h.as_dict() for h in expected_hits]

    monkeypatch.delenv("RETRIEVE_API_KEY")
    refused = runner.invoke(cli, ["search", "shoes"])
    assert refused.exit_code == 1 and "RETRIEVE_API_KEY" in refused.output
    monkeypatch.setenv("RETRIEVE_API_KEY", KEY)
    too_many = runner.invoke(cli, ["search", "shoes", "-k", str(LIMITS["max_k"] + 1)])
    assert too_many.exit_code == 2 and "max_k" in too_many.output  # as a local search: a usage error


def test_search_server_loads_no_model_stack(server: Server) -> None:
    code = (
        "import sys\n"
        "from retrieval.cli import cli\n"
        "cli(['search', 'running shoes for jogging', '-k', '1'], standalone_mode=False)\n"
        "heavy = sorted({'torch', 'faiss', 'sqlalchemy', 'sentence_transformers', 'numpy'} & set(sys.modules))\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**server.env, "RETRIEVE_SERVER": server.url}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=server.folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert SHOES in done.stdout and "HEAVY []" in done.stdout


def test_search_server_says_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli import cli

    result = CliRunner().invoke(cli, ["search", "--server", f"http://127.0.0.1:{free_port()}", "shoes"])
    assert result.exit_code == 1 and "cannot reach the retrieval service" in result.output


# -- OpenAI-compatible embeddings -----------------------------------------------------


def openai_client(server: Server, key: str = KEY) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_the_openai_client_embeds_with_the_stores_encoder(server: Server, client: httpx.Client) -> None:
    import numpy as np

    oa = openai_client(server)
    query = "running shoes for jogging"
    # The client asks for base64 unless told otherwise, and decodes it; float is the other format.
    default = oa.embeddings.create(model=HASH, input=[query, SEED[1]])
    floats = oa.embeddings.create(model=HASH, input=[query, SEED[1]], encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.model == HASH
    a = np.array([d.embedding for d in default.data])
    np.testing.assert_allclose(a, np.array([d.embedding for d in floats.data]), rtol=0, atol=1e-7)
    assert a.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # The vectors documents and queries get: their dot product is the search's score.
    [hit] = search(client, query, k=1)
    assert hit["id"] == SHOES and abs(float(a[0] @ a[1]) - hit["score"]) < 1e-4
    assert default.usage.prompt_tokens == len(query.split()) + len(re.findall(r"\w+", SEED[1]))
    one = oa.embeddings.create(model=f"some-org/{HASH}", input=query)  # one string; an organisation prefix
    np.testing.assert_allclose(one.data[0].embedding, a[0], atol=1e-7)


def test_embeddings_refuse_what_they_cannot_do_in_one_line(server: Server) -> None:
    import openai

    oa = openai_client(server)
    long = " ".join(["word"] * 300)  # the test encoder reads 256 words
    for kwargs, message in [
        ({"model": "text-embedding-3-small", "input": "x"}, "model 'text-embedding-3-small' is not served here"),
        ({"model": HASH, "input": ["fine", long]}, "input[1] has 300 tokens, more than the 256"),
        ({"model": HASH, "input": "x", "dimensions": 128}, "gives vectors of 384 dimensions, not 128"),
        ({"model": HASH, "input": ["x"] * (LIMITS["max_batch"] + 1)}, "input: from 1 to 16 texts (max_batch), not 17"),
        ({"model": HASH, "input": []}, "input: from 1 to 16 texts (max_batch), not 0"),
        ({"model": HASH, "input": ["x", " \n"]}, "input[1]: a text needs a character other than whitespace"),
        ({"model": HASH, "input": [[1, 2]]}, "input: Value error, expected a text or a list of texts"),
    ]:
        with pytest.raises(openai.UnprocessableEntityError) as caught:
            oa.embeddings.create(**kwargs)
        assert message in str(caught.value), caught.value
    with pytest.raises(openai.AuthenticationError):
        openai_client(server, key="wrong-key-0123456789").embeddings.create(model=HASH, input="x")


# -- property-based fuzzing against the OpenAPI schema -----------------------------------


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(server.url + "/openapi.json", headers=AUTH)


FUZZ = {"requests": 0, "failures": 0}
OPERATIONS = [("POST", "/v1/search"), ("POST", "/v1/documents"), ("GET", "/v1/documents/{doc_id}"),
              ("DELETE", "/v1/documents/{doc_id}"), ("GET", "/v1/status"), ("GET", "/metrics"), ("GET", "/healthz"),
              ("GET", "/readyz"), ("POST", "/v1/embeddings")]


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary() -> Iterator[None]:
    yield
    if FUZZ["requests"]:
        sys.stderr.write(f"\nschemathesis: {FUZZ['requests']} requests, {FUZZ['failures']} failures\n")


# schemathesis.pytest.from_fixture does not work with pytest 9 yet, so each operation's
# strategy is drawn from inside the test.
@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("method,path", OPERATIONS)
def test_fuzzed_requests_never_get_a_server_error(api_schema: Any, method: str, path: str, mode: str) -> None:
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    operation = api_schema[path][method]
    has_input = method == "POST" or "{" in path
    if mode == "negative" and not has_input:
        pytest.skip("no request input to make invalid")
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    checks = [not_a_server_error] + ([response_schema_conformance] if mode == "positive" else [])

    @given(case=operation.as_strategy(generation))
    @settings(max_examples=(50 if mode == "positive" else 25) if has_input else 3, deadline=None, suppress_health_check=list(HealthCheck),
              derandomize=True, database=None)
    def run(case: Any) -> None:
        FUZZ["requests"] += 1
        try:
            case.call_and_validate(headers=AUTH, timeout=60, checks=checks)
        except Exception:
            FUZZ["failures"] += 1
            raise

    run()


# -- shutdown (last: it stops the module's server) -----------------------------------------


def test_sigterm_publishes_pending_work_and_exits(server: Server) -> None:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    env = {k: v for k, v in server.env.items() if k.startswith("RETRIEVE_")}
    settings = load_settings(environ=env, cwd=server.folder)
    with Retriever.from_settings(settings) as other:
        other.ingest([{"id": "late", "text": "Written just before the service was stopped."}], sync=False)
    code = server.stop()
    assert code in (0, -signal.SIGTERM), server.log_text()
    log = server.log_text()
    assert "Application shutdown complete" in log and "Traceback" not in log
    with Retriever.from_settings(settings) as after:
        status = after.status()
    assert status["pending_changes"] == 0 and status["indexed"] == status["documents"]
    assert status["worker"]["stopped"] is True and status["worker"]["running"] is False


