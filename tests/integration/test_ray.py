"""Embedding on a Ray cluster (`retrieve embed --executor ray`, `ingest --executor ray`).

Every test shares one local cluster of 2 CPUs (``ray_cluster``): the pools here run two
actors of one CPU each, with the real packaged model wherever meaning matters. Faults are
real: an actor's process is SIGKILLed mid-run, and so is a driver subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from retrieval.cli import cli
from tests.conftest import REAL, REPO, SHARED_DATA
from tests.fixtures.stores import write_jsonl

pytest.importorskip("ray", reason="Ray is not installed (pip install 'retrieval[ray]')")

# The extended suite: run by .ci/run after the README's test command (pytest -m extended).
pytestmark = pytest.mark.extended

CATALOG = SHARED_DATA / "catalog" / "catalog-100k.jsonl"
CRANFIELD = SHARED_DATA / "cranfield"
SAMPLE = REPO / "retrieval" / "sample" / "products.jsonl"
DOCS = 100  # Cranfield documents per store


def catalog(n: int, skip: int = 0) -> list[dict[str, Any]]:
    """``n`` real package descriptions (distinct ids; some share a text, as real data does)."""
    if not CATALOG.is_file():
        pytest.skip("../shared/data/catalog is absent")
    rows = []
    with CATALOG.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < skip:
                continue
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def stored_vectors(r: Any, key: str) -> dict[str, np.ndarray]:
    from sqlalchemy import select

    from retrieval.store.models import Embedding

    with r.store.connection() as conn:
        return {h: np.frombuffer(v, dtype="<f4") for h, v in
                conn.execute(select(Embedding.content_hash, Embedding.vector).where(Embedding.model_key == key))}


def embedding_rows(r: Any) -> tuple[int, int]:
    """(rows, distinct (model key, hash) pairs) in the embeddings table."""
    with r.store.connection() as conn:
        rows = conn.scalar(text("SELECT count(*) FROM embeddings"))
        distinct = conn.scalar(text("SELECT count(*) FROM (SELECT DISTINCT model_key, content_hash FROM embeddings) d"))
    return int(rows or 0), int(distinct or 0)


@pytest.mark.both_databases
def test_ray_ingest_stores_the_local_encoders_vectors_and_verifies_clean(
        ray_cluster: str, make_retriever: Any, encoder: Any) -> None:
    from retrieval.store.records import content_hash

    docs = [json.loads(line) for line in SAMPLE.read_text().splitlines()] + catalog(250)
    r = make_retriever(model=REAL, executor="ray", ray_actors=2)
    report = r.ingest(docs)
    assert report.embed is not None and report.embed.executor == "ray" and report.embed.workers == 2
    assert [w["backend"] for w in report.embed.workers_info] == [encoder.backend] * 2
    assert all(w["model_key"] == encoder.model_key for w in report.embed.workers_info)
    texts = {content_hash(d["text"]): d["text"] for d in docs}
    # Each distinct text embedded once, on the cluster; the sync embedded nothing itself.
    assert report.embed.embedded == len(texts) and report.embed.shared == len(docs) - len(texts)
    assert report.sync is not None and report.sync.embedded == 0 and report.sync.changes == len(docs)
    stored = stored_vectors(r, encoder.model_key)
    assert set(stored) == set(texts)
    assert embedding_rows(r) == (len(texts), len(texts))
    hashes = list(texts)
    local = encoder.encode([texts[h] for h in hashes])
    remote = np.stack([stored[h] for h in hashes])
    np.testing.assert_allclose(remote, local, atol=2e-5)
    assert r.verify().ok
    hits = r.search("What are good shoes for jogging?", k=3)
    assert hits[0].id == "p002"
    # Nothing left to embed: a second run starts no cluster work at all.
    again = r.embed(executor="ray")
    assert again.documents == 0 and again.embedded == 0 and again.workers_info == []


def test_ray_embeds_the_passages_of_long_documents(ray_cluster: str, make_retriever: Any, encoder: Any) -> None:
    """A document longer than the window is embedded on the cluster as its passages, the
    vectors a local encoder gives them; the sync then embeds nothing itself."""
    from sqlalchemy import text as sql

    from retrieval.embed.passages import split_texts

    long = "\n\n".join(d["text"] for d in catalog(120))  # catalog descriptions as paragraphs
    pieces = split_texts(encoder, [long])[0]
    assert len(pieces) > 2
    r = make_retriever(model=REAL, executor="ray", ray_actors=2)
    report = r.ingest([{"id": "long", "text": long}, {"id": "short", "text": "A red wool scarf."}])
    assert report.embed is not None and report.embed.executor == "ray"
    assert report.embed.embedded == len(pieces) + 1  # the passages and the short text, not the truncated whole
    assert report.sync is not None and report.sync.embedded == 0 and report.sync.long_documents == 1
    with r.store.engine.connect() as conn:
        rows = conn.execute(sql("SELECT start_char, end_char, content_hash FROM passages ORDER BY ordinal")).all()
    assert [(a, b) for a, b, _ in rows] == [(p.start, p.end) for p in pieces]
    stored = stored_vectors(r, encoder.model_key)
    local = encoder.encode([p.text(long) for p in pieces])
    np.testing.assert_allclose(np.stack([stored[h] for _, _, h in rows]), local, atol=2e-5)
    assert r.verify().ok


@pytest.mark.skipif(not (CRANFIELD / "corpus.jsonl").is_file(), reason="../shared/data/cranfield is absent")
def test_cranfield_ndcg_is_the_same_as_local_ingest(ray_cluster: str, real_store_env: dict[str, str],
                                                    tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 100 shortest Cranfield documents ingested through the CLI on the cluster, and
    into another store locally: `retrieve eval` gives the same nDCG@10 on all 225 queries."""
    rows = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [{"id": d["_id"], "text": " ".join(p for p in (d["title"].strip(), d["text"].strip()) if p)} for d in rows]
    rows = sorted((d for d in rows if d["text"]), key=lambda d: (len(d["text"]), d["id"]))[:DOCS]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    queries = write_jsonl(tmp_path / "queries.jsonl", [{"id": q["_id"], "text": q["text"]} for q in (
        json.loads(line) for line in (CRANFIELD / "queries.jsonl").read_text().splitlines())])
    runner = CliRunner()
    ndcg = {}
    for executor in ("ray", "local"):
        monkeypatch.setenv("RETRIEVE_DATABASE_URL", f"sqlite:///{tmp_path / executor / 'retrieval.db'}")
        monkeypatch.setenv("RETRIEVE_INDEX_DIR", str(tmp_path / executor / "index"))
        done = runner.invoke(cli, ["ingest", "--executor", executor, "--json", str(corpus)])
        assert done.exit_code == 0, done.output
        report = json.loads(done.output)
        assert report["added"] == DOCS and report["embedded"] == len({d["text"] for d in rows})
        assert ("embed" in report) == (executor == "ray")
        ev = runner.invoke(cli, ["eval", "--queries", str(queries), "--qrels", str(CRANFIELD / "qrels" / "test.tsv"),
                                 "--json"])
        assert ev.exit_code == 0, ev.output
        ndcg[executor] = json.loads(ev.output)["metrics"]["ndcg@10"]
    assert ndcg["ray"] > 0.05  # 100 of 1,400 documents: most judged ones are absent
    assert ndcg["ray"] == pytest.approx(ndcg["local"], abs=1e-4), ndcg


def test_an_actor_killed_mid_run_is_restarted_and_every_text_is_stored_once(
        ray_cluster: str, make_retriever: Any, encoder: Any) -> None:
    from retrieval.embed.spec import EncoderSpec
    from retrieval.executors.ray_pool import RayPool
    from retrieval.store.records import content_hash
    from retrieval.sync.vectors import embed_stored

    docs = catalog(600, skip=1000)
    r = make_retriever(model=REAL)
    r.ingest(docs, sync=False)
    texts = {content_hash(d["text"]): d["text"] for d in docs}
    spec = EncoderSpec.pinned(r.encoder, REAL, threads=1)
    with RayPool(spec, actors=2) as pool:
        before = pool.pids()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["report"] = embed_stored(r.store, pool, commit_every=64, batch=32, progress=False)
            except BaseException as exc:  # reported by the assertion below
                outcome["error"] = exc

        driver = threading.Thread(target=run)
        driver.start()
        # Kill one actor's process once the run is under way (some vectors committed).
        deadline = time.monotonic() + 120
        while embedding_rows(r)[0] == 0 and time.monotonic() < deadline and driver.is_alive():
            time.sleep(0.05)
        committed_at_kill = embedding_rows(r)[0]
        os.kill(before[0], signal.SIGKILL)
        driver.join(timeout=300)
        assert not driver.is_alive()
        assert "error" not in outcome, outcome.get("error")
        after = pool.pids()
    assert 0 < committed_at_kill < len(texts), "the kill did not land mid-run"
    assert after[0] != before[0] and after[1] == before[1]  # Ray restarted the killed actor
    report = outcome["report"]
    assert report.embedded == len(texts)  # every text committed by this run, once
    assert embedding_rows(r) == (len(texts), len(texts))
    stored = stored_vectors(r, encoder.model_key)
    picks = sorted(texts)[:: max(1, len(texts) // 40)]
    np.testing.assert_allclose(np.stack([stored[h] for h in picks]), encoder.encode([texts[h] for h in picks]),
                               atol=2e-5)
    assert r.sync().embedded == 0
    assert r.verify().ok


def test_a_killed_driver_resumes_where_its_commits_stopped(ray_cluster: str, real_store_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever
    from retrieval.store.records import content_hash

    docs = catalog(500, skip=3000)
    distinct = len({content_hash(d["text"]) for d in docs})
    runner = CliRunner()
    stored = runner.invoke(cli, ["ingest", "--no-sync", str(write_jsonl(tmp_path / "docs.jsonl", docs))])
    assert stored.exit_code == 0, stored.output
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "retrieval", "embed", "--executor", "ray", "--address", ray_cluster,
               "--commit-every", "50", "--json"]
    with Retriever.from_settings(load_settings()) as r:
        driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 180
            while embedding_rows(r)[0] < 100 and time.monotonic() < deadline and driver.poll() is None:
                time.sleep(0.05)
            driver.send_signal(signal.SIGKILL)
        finally:
            driver.wait(timeout=60)
        first = embedding_rows(r)[0]
        assert driver.returncode == -signal.SIGKILL
        assert 100 <= first < distinct, "the kill did not land mid-run"
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr
        report = json.loads(again.stdout)
        # Only what had no committed vector was embedded again.
        assert report["embedded"] == distinct - first
        assert embedding_rows(r) == (distinct, distinct)
        done = runner.invoke(cli, ["embed", "--executor", "ray", "--address", ray_cluster])
        assert done.exit_code == 0 and "Nothing to embed" in done.output, done.output
        synced = r.sync()
        assert synced.embedded == 0 and synced.changes == len(docs)
        assert r.verify().ok


def _model_copy(home: Path, changed: bool) -> None:
    """~/minilm under ``home``: the packaged model's files (linked), with the pooling's
    configuration rewritten when ``changed`` (other files, so another model key). The
    home also gets the cluster's token (~/.ray), without which a Ray worker cannot start."""
    from retrieval.embed.model import resolve_model

    home.mkdir(parents=True, exist_ok=True)
    (home / ".ray").symlink_to(Path(os.path.expanduser("~/.ray")), target_is_directory=True)

    source = Path(resolve_model(REAL).path or "")
    target = home / "minilm"
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif path.name == "config.json" and path.parent.name == "1_Pooling" and changed:
            dest.parent.mkdir(parents=True, exist_ok=True)
            config = json.loads(path.read_text())
            config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
            dest.write_text(json.dumps(config))
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.symlink_to(path)


def test_a_cluster_that_would_mix_model_keys_is_refused(ray_cluster: str, make_retriever: Any, encoder: Any,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model is configured as ~/minilm; on the actors' "nodes" (another HOME) that
    folder holds a model that pools differently. The driver pins its key; the actors
    would produce another, so the run is refused before a single vector is stored."""
    from retrieval.errors import ModelMismatchError

    _model_copy(tmp_path / "driver-home", changed=False)
    _model_copy(tmp_path / "node-home", changed=True)
    monkeypatch.setenv("HOME", str(tmp_path / "driver-home"))
    r = make_retriever(model="~/minilm", ray_actors=2)
    r.ingest(catalog(50), sync=False)
    with pytest.raises(ModelMismatchError) as refused:
        r.embed(executor="ray", runtime_env={"env_vars": {"HOME": str(tmp_path / "node-home")}})
    message = str(refused.value)
    assert "the Ray cluster would mix model keys" in message
    assert f"vectors {r.encoder.model_key}" in message and "2 of 2 actors" in message
    assert "nothing was embedded" in message
    assert embedding_rows(r) == (0, 0)
    # The same cluster with the driver's files embeds.
    ok = r.embed(executor="ray", runtime_env={"env_vars": {"HOME": str(tmp_path / "driver-home")}})
    assert ok.embedded == len({d["text"] for d in catalog(50)})


@pytest.mark.skipif("bf16" not in __import__("retrieval.embed.cpu", fromlist=["detected"]).detected(),
                    reason="this CPU has no native bfloat16: no actor can differ from the driver by it")
def test_actors_without_bfloat16_are_refused_when_the_driver_pinned_it(ray_cluster: str, make_retriever: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster's workers see bf16 hidden (as on a node without it); a driver that
    has it and pins openvino bf16 gets vectors no actor would produce."""
    from retrieval.errors import ModelMismatchError

    monkeypatch.delenv("RETRIEVAL_HIDE_CPU_FEATURES")
    r = make_retriever(model=REAL, backend="openvino", precision="bf16", ray_actors=2)
    r.ingest(catalog(20), sync=False)
    with pytest.raises(ModelMismatchError, match=r"openvino bf16 .*build torch fp32|openvino bf16 .*build openvino fp32"):
        r.embed(executor="ray", runtime_env={"env_vars": {"RETRIEVAL_HIDE_CPU_FEATURES": "bf16"}})
    assert embedding_rows(r) == (0, 0)


def test_embed_runs_locally_and_the_default_path_never_imports_ray(store_env: dict[str, str], tmp_path: Path) -> None:
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": f"d{i}", "text": f"text number {i % 40}"} for i in range(100)])
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "--no-sync", str(docs)]).exit_code == 0
    done = runner.invoke(cli, ["embed", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["executor"] == "local" and report["documents"] == 100
    assert report["embedded"] == 40 and report["shared"] == 60
    status = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert status["pending_changes"] == 100  # embedding does not publish
    published = runner.invoke(cli, ["embed", "--sync"])
    assert published.exit_code == 0 and "Nothing to embed" in published.output and "Published 100" in published.output
    # A fresh process that ingests, embeds, syncs and searches on the default executor
    # never imports Ray.
    script = ("import sys\nfrom retrieval.cli import cli\n"
              f"for args in (['ingest', {str(docs)!r}], ['embed'], ['sync'], ['search', 'text number 3']):\n"
              "    try:\n        cli(args)\n    except SystemExit as e:\n        assert not e.code, e.code\n"
              "assert 'ray' not in sys.modules, 'ray was imported'\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr


def test_bad_executor_settings_are_one_line_errors(store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    monkeypatch.setenv("RETRIEVE_EXECUTOR", "dask")
    bad = runner.invoke(cli, ["embed"])
    assert bad.exit_code == 2 and "executor: must be one of local, ray, got 'dask'" in bad.output
    monkeypatch.setenv("RETRIEVE_EXECUTOR", "ray")
    monkeypatch.setenv("RETRIEVE_RAY_THREADS", "0")
    bad = runner.invoke(cli, ["embed"])
    assert bad.exit_code == 2 and "ray.threads: must be at least 1" in bad.output


def test_more_actors_than_the_cluster_holds_is_refused(ray_cluster: str, make_retriever: Any) -> None:
    r = make_retriever(ray_actors=3)
    r.ingest([{"id": "a", "text": "one text"}], sync=False)
    from retrieval.errors import RetrievalError

    with pytest.raises(RetrievalError, match=r"3 actors of 1 CPU\(s\) each need 3 CPUs, but the Ray cluster has 2"):
        r.embed(executor="ray")


def test_without_ray_the_ray_executor_is_refused_before_anything_is_stored(
        store_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a))
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "one text"}])
    runner = CliRunner()
    refused = runner.invoke(cli, ["ingest", "--executor", "ray", str(docs)])
    assert refused.exit_code == 2
    assert refused.output.strip().endswith("the ray executor needs Ray, which is not installed: pip install 'retrieval[ray]'")
    assert json.loads(runner.invoke(cli, ["status", "--json"]).output)["documents"] == 0
