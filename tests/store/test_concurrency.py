"""Concurrent writers serialise safely; readers keep answering and never see a half state.

The stores use the test encoder (hash-384): these tests are about locks and snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.stores import write_jsonl

pytestmark = pytest.mark.both_databases


def _catalog_like(prefix: str, n: int) -> list[dict[str, str]]:
    things = ["kettle", "lamp", "backpack", "scarf", "mug", "tent", "jacket", "pillow", "drill", "novel"]
    adjectives = ["blue", "compact", "wooden", "waterproof", "vintage", "heavy-duty", "soft", "electric"]
    return [
        {"id": f"{prefix}{i}", "text": f"A {adjectives[i % len(adjectives)]} {things[(i * 7) % len(things)]} number {i} from batch {prefix}"}
        for i in range(n)
    ]


def test_concurrent_ingest_processes_and_a_reader(make_retriever, tmp_path: Path) -> None:
    reader = make_retriever()  # creates the store and its (empty) index
    reader.ingest([{"id": "seed", "text": "A cast iron frying pan"}])
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETRIEVE_DATABASE_URL": reader.settings.store.database_url,
        "RETRIEVE_INDEX_DIR": reader.settings.store.index_dir,
        "RETRIEVE_PROGRESS": "false",
        "RETRIEVE_MODEL": reader.settings.encoder.model,
    }
    files = [write_jsonl(tmp_path / f"{p}.jsonl", _catalog_like(p, 150)) for p in ("a", "b", "c")]
    procs = [
        subprocess.Popen([sys.executable, "-m", "retrieval", "ingest", str(f)], env=env, cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in files
    ]
    seen_counts: list[int] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        try:
            while not stop.is_set():
                hits = reader.search("frying pan", k=3)
                assert hits and hits[0].id == "seed"
                seen_counts.append(reader.status()["documents"])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=read_loop)
    thread.start()
    outputs = [p.communicate(timeout=600) for p in procs]
    stop.set()
    thread.join(timeout=60)
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
        assert "150 added" in out
        assert "locked" not in err
    assert not errors, errors
    assert seen_counts == sorted(seen_counts)  # documents only ever appear, never vanish
    assert reader.status()["documents"] == 451
    assert reader.verify().ok
    wanted = _catalog_like("b", 150)[9]
    top = reader.search(wanted["text"], k=1)[0]
    assert top.id == "b9" and abs(top.score - 1.0) < 1e-4


def test_sync_and_reindex_racing_in_processes_leave_one_consistent_index(make_retriever, tmp_path: Path) -> None:
    r = make_retriever()
    r.ingest(_catalog_like("x", 60), sync=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVE_DATABASE_URL": r.settings.store.database_url,
           "RETRIEVE_INDEX_DIR": r.settings.store.index_dir, "RETRIEVE_PROGRESS": "false", "RETRIEVE_MODEL": r.settings.encoder.model}
    cmds = [["sync"], ["reindex"], ["sync"]]
    procs = [subprocess.Popen([sys.executable, "-m", "retrieval", *c, "--json"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        json.loads(out)
    st = r.status()
    assert st["indexed"] == 60 and st["pending_changes"] == 0 and st["stored_vectors"] == 60
    assert r.verify().ok
