"""The worker as a real process, scheduled reindex decisions, and space reclamation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SEED
from tests.fixtures.databases import execute_sql
from tests.fixtures.stores import write_jsonl


def _wait_for(predicate, timeout: float = 120.0, interval: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.mark.both_databases
def test_worker_process_follows_plain_sql_writes_and_stops_cleanly(store_env, tmp_path: Path, db_backend: str) -> None:
    runner = CliRunner()
    data = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert runner.invoke(cli, ["ingest", str(data)]).exit_code == 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # On PostgreSQL the worker is woken by NOTIFY: with a poll interval longer than the
    # test's timeouts, only the notification can make it apply the change in time.
    poll = "0.2" if db_backend == "sqlite" else "600"
    cmd = [sys.executable, "-m", "retrieval", "worker", "--poll-interval", poll]
    worker = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        status = lambda: json.loads(runner.invoke(cli, ["status", "--json"]).output)
        _wait_for(lambda: (status().get("worker") or {}).get("running") is True)
        assert status()["worker"]["pid"] == worker.pid

        second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 3
        assert f"pid {worker.pid}" in second.stderr and "--wait" in second.stderr

        execute_sql(store_env["RETRIEVE_DATABASE_URL"],
                    "INSERT INTO documents (external_id, text) VALUES ('sql1', 'A cast iron frying pan for the stove')",
                    "DELETE FROM documents WHERE external_id = 'd0'")
        _wait_for(lambda: status()["pending_changes"] == 0 and status()["indexed"] == 4, timeout=60)
        top = json.loads(runner.invoke(cli, ["search", "--json", "-k", "1", "frying pan"]).output)["results"][0]
        assert top["id"] == "sql1"
        assert runner.invoke(cli, ["verify"]).exit_code == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    assert "event=started" in err and "event=synced" in err and "event=stopping signal=SIGTERM" in err
    assert "event=stopped" in err
    state = json.loads(runner.invoke(cli, ["status", "--json"]).output)["worker"]
    assert state["running"] is False and state["stopped"] is True


def test_worker_once_in_process_and_max_batch(make_retriever, tmp_path: Path) -> None:
    from retrieval.sync.worker import Worker

    r = make_retriever()
    r.ingest([{"id": "a", "text": SEED[0]}])
    r.ingest([{"id": f"b{i}", "text": t} for i, t in enumerate(SEED)], sync=False)
    assert r.status()["pending_changes"] == 4
    w = Worker(r, max_batch=2)
    w.run(once=True)
    assert r.status()["pending_changes"] == 2  # one bounded batch published
    w.run(once=True)
    assert r.status()["pending_changes"] == 0 and r.verify().ok


def test_reindex_if_needed_explains_itself(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert runner.invoke(cli, ["ingest", str(data)]).exit_code == 0
    result = runner.invoke(cli, ["reindex", "--if-needed"])
    assert result.exit_code == 0 and result.output.startswith("No reindex needed: the index is current (4 documents")
    changed = runner.invoke(cli, ["--index-type", "hnsw", "reindex", "--if-needed"])
    assert changed.exit_code == 0, changed.output
    # A new index type is a merge, segment by segment, from the stored vectors.
    assert changed.output.startswith("No reindex needed"), changed.output
    assert "Merged 1 segments (type, 4 documents) into one hnsw segment, recall@10 1.000" in changed.output
    st = json.loads(runner.invoke(cli, ["--index-type", "hnsw", "status", "--json"]).output)
    assert st["index_type"] == "hnsw" and [s["type"] for s in st["segments"]] == ["hnsw"]
    hits = json.loads(runner.invoke(cli, ["--index-type", "hnsw", "search", "--json", "running shoes for jogging"]).output)
    assert hits["results"][0]["id"] == "d1"
    again = runner.invoke(cli, ["--index-type", "hnsw", "reindex", "--if-needed"])
    assert again.output.startswith("No reindex needed") and "Merged" not in again.output
    model = runner.invoke(cli, ["--model", "hash-256", "reindex", "--if-needed"])
    assert model.output.startswith("Reindexing: the configured model changed"), model.output


def test_hnsw_index_stays_consistent_through_updates_and_deletes(make_retriever) -> None:
    r = make_retriever(index_type="hnsw")
    r.ingest([{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    r.ingest([{"id": "d1", "text": "A woollen winter scarf"}])
    r.delete(["d2"])
    assert {h.id for h in r.search("anything", k=10)} == {"d0", "d1", "d3"}
    assert r.search("scarf for winter", k=1)[0].id == "d1"
    assert r.verify().ok


def test_compact_reclaims_unused_embeddings_and_keeps_search_working(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    docs = [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)]
    assert runner.invoke(cli, ["ingest", str(write_jsonl(tmp_path / "a.jsonl", docs))]).exit_code == 0
    docs[0]["text"] = "A brand new text for the first document"
    assert runner.invoke(cli, ["ingest", str(write_jsonl(tmp_path / "b.jsonl", docs))]).exit_code == 0
    assert runner.invoke(cli, ["delete", "d3"]).exit_code == 0
    st = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert st["reclaimable"]["unused_embeddings"] == 2  # the old text of d0 and the deleted d3
    assert st["stored_vectors"] == 5
    result = runner.invoke(cli, ["compact", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["embeddings_removed"] == 2
    st = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert st["stored_vectors"] == 3 and st["reclaimable"]["unused_embeddings"] == 0
    assert st["reclaimable"]["old_index_version_bytes"] == 0
    assert runner.invoke(cli, ["verify"]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["search", "--json", "-k", "1", "running shoes for jogging"]).output)["results"][0]["id"] == "d1"
    # Changes written after compaction are still applied.
    assert runner.invoke(cli, ["delete", "d1"]).exit_code == 0
    assert "d1" not in {r["id"] for r in json.loads(runner.invoke(cli, ["search", "--json", "-k", "5", "shoes"]).output)["results"]}


@pytest.mark.both_databases
def test_change_log_is_pruned_only_below_every_replicas_position(make_retriever, tmp_path: Path) -> None:
    from retrieval.sync.space import collect_garbage
    from retrieval.sync.worker import Worker

    a = make_retriever(replica_name="a")
    b = make_retriever(tmp_path / "b", database_url=a.settings.store.database_url, replica_name="b")
    a.ingest([{"id": f"d{i}", "text": f"document number {i}"} for i in range(20)])
    Worker(a).run(once=True)
    Worker(b).run(once=True)  # b is at the same position now, and says so in the database
    b_seq = b.status()["last_seq"]
    for i in range(3):  # three generations on a: every index version a keeps is past b
        a.ingest([{"id": f"d{i}", "text": f"changed document {i}"}])
        Worker(a).run(once=True)
    assert a.index_store.applied_floor() > b_seq
    collect_garbage(a.store, a.index_store, a.replica_name)  # a has applied everything, b has not: b's rows stay
    with a.store.read() as snap:
        assert snap.oldest_seq() <= b_seq + 1
    report = b.sync()
    assert not report.full and report.changes == 3
    Worker(b).run(once=True)

    # A replica gone for good holds the log back until it is forgotten; a replica whose
    # position was pruned anyway rebuilds from the stored vectors instead of missing changes.
    a.ingest([{"id": f"d{i}", "text": f"changed again {i}"} for i in range(3)])
    Worker(a).run(once=True)
    assert CliRunner().invoke(cli, ["forget-replica", "b"], env={"RETRIEVE_DATABASE_URL": a.settings.store.database_url,
                                                                "RETRIEVE_INDEX_DIR": a.settings.store.index_dir,
                                                                "RETRIEVE_MODEL": a.settings.encoder.model}).exit_code == 0
    a.ingest([{"id": "extra", "text": "one more document"}])
    Worker(a).run(once=True)
    collect_garbage(a.store, a.index_store, a.replica_name)
    report = b.sync()
    assert report.full
    assert b.search("changed again 1", k=1)[0].id == "d1"
    assert b.verify().ok and b.status()["indexed"] == 21
