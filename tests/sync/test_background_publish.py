"""Small writes that return before their index generation is published (ingest.publish:
background): every guarantee a write gives when it returns holds before the publish.

The tests hold the index folder's sync lock (every publisher takes it) while they write,
so the background publish cannot have run when they look: what they see is the state
between a write's return and its publish, not a race. The kills are SIGKILLs of real
processes, on both databases.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from retrieval.errors import IndexWriteError
from retrieval.store.records import content_hash

pytestmark = pytest.mark.both_databases

SEED = [{"id": "keep", "text": "waterproof hiking boots for rough mountain trails"},
        {"id": "old", "text": "organic green tea in loose leaf form"},
        {"id": "gone", "text": "a children's picture book about dinosaurs"}]


def _exact(r: Any, query: str, text: str) -> float:
    q = r.encoder.encode_queries([query])[0]
    return float(np.dot(q, r.encoder.encode([text])[0]))


def _pending(r: Any) -> int:
    return int(r.lag()["pending_changes"])


def test_a_search_right_after_a_background_write_sees_it(make_retriever: Any) -> None:
    r = make_retriever()
    other = make_retriever()  # another Retriever (as another process would be) on the same store
    r.ingest(SEED, wait=True)
    with r.sync_lock():  # no publisher can run until the end of this block
        added = r.ingest([{"id": "new", "text": "lightweight running shoes with soft cushioning"}])
        updated = r.ingest([{"id": "old", "text": "stainless steel water bottle that keeps drinks cold"}])
        deleted, missing = r.delete(["gone"])
        assert added.background and added.sync is None and added.added == 1
        assert updated.background and updated.updated == 1
        assert (deleted, missing) == (1, [])
        assert _pending(r) == 3  # nothing published yet
        # The vectors were stored before the write: no search embeds a pending document.
        with r.store.read() as snap:
            texts = ["lightweight running shoes with soft cushioning", "stainless steel water bottle that keeps drinks cold"]
            assert len(snap.embeddings(r.encoder.model_key, [content_hash(t) for t in texts])) == 2
        for searcher in (r, other):
            hit = searcher.search("lightweight running shoes with soft cushioning", k=1)[0]
            assert hit.id == "new"
            assert abs(hit.score - _exact(r, "lightweight running shoes with soft cushioning", hit.text)) < 1e-4
            hit = searcher.search("stainless steel water bottle that keeps drinks cold", k=1)[0]
            assert (hit.id, hit.text) == ("old", "stainless steel water bottle that keeps drinks cold")
            assert abs(hit.score - _exact(r, "stainless steel water bottle that keeps drinks cold", hit.text)) < 1e-4
            ids = {h.id for h in searcher.search("a children's picture book about dinosaurs", k=10)}
            assert ids == {"keep", "new", "old"}  # never the deleted one
            assert searcher.get("old").text.startswith("stainless")
        assert r.status()["background_publish"]["pending"] is True
    r.flush()
    assert _pending(r) == 0 and _pending(other) == 0
    assert r.verify().ok
    assert r.status()["background_publish"]["pending"] is False


def test_wait_and_the_setting_publish_before_returning(make_retriever: Any) -> None:
    r = make_retriever()
    report = r.ingest(SEED, wait=True)
    assert report.sync is not None and not report.background and _pending(r) == 0
    waiting = make_retriever(publish="wait")
    report = waiting.ingest([{"id": "w", "text": "a beginner's guide to growing tomatoes"}])
    assert report.sync is not None and not report.background and _pending(r) == 0
    assert waiting.delete(["w"]) == (1, []) and _pending(r) == 0
    # More documents than background_max_docs: published before returning too.
    small = make_retriever(background_max_docs=2)
    report = small.ingest([{"id": f"m{i}", "text": f"many documents {i}"} for i in range(3)])
    assert report.sync is not None and not report.background and _pending(r) == 0
    report = small.ingest([{"id": "m0", "text": "many documents again"}])
    assert report.background


def test_close_publishes_what_is_pending(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest(SEED, wait=True)
    r.publisher.delay = 3600.0  # the thread would wait an hour: only close() publishes now
    r.ingest([{"id": "late", "text": "ergonomic office chair with lumbar support"}])
    r.delete(["gone"])
    assert _pending(r) == 2
    r.close()
    again = make_retriever()
    assert _pending(again) == 0
    assert again.search("ergonomic office chair with lumbar support", k=1)[0].id == "late"
    assert again.verify().ok and again.verify().indexed == 3


def test_a_failed_background_publish_is_reported_and_retried(make_retriever: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    r = make_retriever()
    r.ingest(SEED, wait=True)

    def fails(**_: Any) -> Any:
        raise IndexWriteError("no space left on device (simulated)")

    monkeypatch.setattr(r.keeper, "sync", fails)
    report = r.ingest([{"id": "x", "text": "a python library for parsing json quickly"}])
    assert report.background
    with pytest.raises(IndexWriteError, match="no space left on device"):
        r.flush()
    state = r.status()["background_publish"]
    assert "no space left on device" in state["last_error"] and state["failures"] == 1
    assert r.search("a python library for parsing json quickly", k=1)[0].id == "x"  # stored, and found
    assert _pending(r) == 1
    monkeypatch.undo()
    r.ingest([{"id": "y", "text": "quiet music on a plane"}])  # the next write retries
    r.flush()
    assert _pending(r) == 0 and r.status()["background_publish"]["last_error"] is None
    assert r.verify().indexed == 5


_CHILD = """
import json, sys, threading
from retrieval import Retriever, load_settings
r = Retriever.from_settings(load_settings())
r.publisher.delay = float(sys.argv[2])
report = r.ingest([{"id": sys.argv[1], "text": "a cast iron skillet for searing steaks"}])
print(json.dumps({"background": report.background, "added": report.added}), flush=True)
if sys.argv[3] == "hang":
    threading.Event().wait()  # until killed
"""


def _child(doc_id: str, delay: float, then: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, doc_id, str(delay), then], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_write_killed_before_its_publish_is_found_and_published_after_restart(
        make_retriever: Any, store_env: dict[str, str]) -> None:
    r = make_retriever()
    r.ingest(SEED, wait=True)
    lock = r.sync_lock()
    with lock:  # the child's publisher blocks on this lock: it is killed before publishing
        child = _child("killed", 0.0, "hang")
        assert child.stdout is not None and child.stderr is not None
        line = child.stdout.readline()
        if not line:  # it died before its write returned: say why
            pytest.fail(child.stderr.read())
        assert json.loads(line) == {"background": True, "added": 1}
        child.send_signal(signal.SIGKILL)
        assert child.wait(60) == -signal.SIGKILL
    child.stdout.close()
    child.stderr.close()
    after = make_retriever()  # the restart
    assert after.get("killed").text == "a cast iron skillet for searing steaks"
    assert _pending(after) == 1  # durable, not published
    assert after.search("a cast iron skillet for searing steaks", k=1)[0].id == "killed"
    after.ingest([{"id": "next", "text": "garden vegetables"}])  # the next write publishes the backlog too
    after.flush()
    assert _pending(after) == 0
    report = after.verify()
    assert report.ok and report.indexed == 5


def test_a_process_that_exits_without_closing_publishes_first(make_retriever: Any,
                                                               store_env: dict[str, str]) -> None:
    r = make_retriever()
    r.ingest(SEED, wait=True)
    # The child's thread would wait an hour before publishing: its exit does it.
    done = _child("exited", 3600.0, "exit").communicate(timeout=120)
    assert json.loads(done[0]) == {"background": True, "added": 1}, done[1]
    assert _pending(r) == 0
    assert r.verify().indexed == 4
