"""A stateful property test: random sequences of ingest, update, delete (each published
before returning, in the background, or not at all), sync, flush, reindex, merge (alone,
and with a write committed and synced while the merge builds) and search against a plain
dict of what the store should hold.

After every step the database must hold exactly the model's documents, `verify` must
find no drift (and nothing pending once synced), and a search must return the top-k of
an exact brute-force search over the model's texts with the same encoder (ties aside:
equal scores may come in either order), each hit carrying its document's latest text.

The store uses the test encoder (hash-384): the properties are about storage, sync and
search, not meaning, and they hold for any encoder.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from retrieval.config import load_settings
from retrieval.embed import create_encoder
from retrieval.retriever import Retriever
from tests.conftest import HASH

# A small vocabulary: identical texts on different ids (shared vectors, tied scores)
# and updates back to an earlier text happen often, and embeddings stay cheap.
TEXTS = [
    "waterproof hiking boots for rough mountain trails",
    "lightweight running shoes with soft cushioning",
    "a cast iron skillet for searing steaks",
    "noise cancelling wireless headphones",
    "a python library for parsing json quickly",
    "organic green tea in loose leaf form",
    "a children's picture book about dinosaurs",
    "ergonomic office chair with lumbar support",
    "stainless steel water bottle that keeps drinks cold",
    "a beginner's guide to growing tomatoes",
]
QUERIES = TEXTS[:4] + ["shoes for jogging", "something to cook meat in", "quiet music on a plane", "garden vegetables"]
IDS = [f"d{i}" for i in range(7)]

ids = st.sampled_from(IDS)
texts = st.sampled_from(TEXTS)

_VECTORS: dict[str, np.ndarray] = {}


def _vector(encoder: Any, text: str, query: bool = False) -> np.ndarray:
    key = ("q:" if query else "d:") + text
    if key not in _VECTORS:
        fn = encoder.encode_queries if query else encoder.encode
        _VECTORS[key] = np.asarray(fn([text])[0], dtype=np.float32)
    return _VECTORS[key]


class StoreMachine(RuleBasedStateMachine):
    # Makes each run's database: a SQLite file in the run's folder unless a test sets it.
    new_database: Callable[[], str] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="retrieve-state-"))
        url = type(self).new_database() if type(self).new_database else f"sqlite:///{self.folder / 'retrieval.db'}"
        # Tiny tiers and no inline merges: merges happen only in the merge rules, often.
        values = {"database_url": url, "index_dir": str(self.folder / "index"),
                  "progress": False, "model": HASH, "merge_segments_per_tier": 2, "merge_max_at_once": 3,
                  "merge_floor_docs": 1, "merge_inline_max_docs": 0}
        self.retriever = Retriever.from_settings(load_settings(overrides=values, environ={}, cwd=self.folder))
        # Another process's view of the same store: it writes while a merge runs.
        self.other = Retriever.from_settings(load_settings(overrides=values, environ={}, cwd=self.folder))
        self.encoder = create_encoder(HASH, progress=False)  # the store's encoder (cached)
        self.model: dict[str, str] = {}
        self.unsynced = False  # a write was committed without a sync since the last publish
        self.background = False  # a write left its publish to the background publisher since the last flush

    def teardown(self) -> None:
        self.retriever.close()
        self.other.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- writes -----------------------------------------------------------------------

    @rule(docs=st.dictionaries(ids, texts, min_size=1, max_size=4), sync=st.booleans(), wait=st.booleans())
    def ingest(self, docs: dict[str, str], sync: bool, wait: bool) -> None:
        report = self.retriever.ingest([{"id": k, "text": v} for k, v in docs.items()], sync=sync, wait=wait)
        changed = sum(1 for k, v in docs.items() if self.model.get(k) != v)
        assert report.added + report.updated == changed
        assert report.added == sum(1 for k in docs if k not in self.model)
        self.model.update(docs)
        if changed and sync and not wait:
            self.background = True
        elif changed:
            self.unsynced = not sync

    @rule(doc_id=ids, text=texts)
    def update(self, doc_id: str, text: str) -> None:
        """An update of one document (an insert when it does not exist), synced."""
        self.retriever.ingest([{"id": doc_id, "text": text}], wait=True)
        changed = self.model.get(doc_id) != text
        self.model[doc_id] = text
        if changed:
            self.unsynced = False

    @rule(doc_ids=st.lists(ids, min_size=1, max_size=3, unique=True), sync=st.booleans(), wait=st.booleans())
    def delete(self, doc_ids: list[str], sync: bool, wait: bool) -> None:
        deleted, missing = self.retriever.delete(doc_ids, sync=sync, wait=wait)
        assert deleted == sum(1 for i in doc_ids if i in self.model)
        assert sorted(missing) == sorted(i for i in doc_ids if i not in self.model)
        for i in doc_ids:
            self.model.pop(i, None)
        if deleted and sync and not wait:
            self.background = True
        elif deleted:
            self.unsynced = not sync

    @rule()
    def sync(self) -> None:
        self.retriever.sync()
        self.unsynced = False
        self.background = False

    @rule()
    def flush(self) -> None:
        """The background publisher publishes what the writes left to it."""
        self.retriever.flush()
        self.background = False

    @rule()
    def reindex(self) -> None:
        report = self.retriever.reindex()
        assert report.added == len(self.model)
        self.unsynced = False
        self.background = False

    @rule()
    def merge(self) -> None:
        """Every merge the policy asks for; afterwards it asks for none."""
        self.flush()  # a background publish after the merges would add a segment
        self.retriever.merge()
        assert self.retriever.pending_merges() == []

    @rule(docs=st.dictionaries(ids, texts, min_size=1, max_size=3), gone=st.lists(ids, max_size=2, unique=True))
    def merge_while_writing(self, docs: dict[str, str], gone: list[str]) -> None:
        """A merge whose inputs change while it builds: another writer updates and deletes
        documents (and syncs) between the merge's build and its manifest switch."""
        from retrieval.index.build import BuildOptions
        from retrieval.sync.merge import merge

        r = self.retriever
        self.flush()  # no background publish of this process's writes races the merge below
        plans = r.pending_merges()
        if not plans:
            return

        def lock_after_a_write() -> Any:
            self.other.ingest([{"id": k, "text": v} for k, v in docs.items()], wait=True)
            self.other.delete(gone, wait=True)
            return r.sync_lock()

        with r.merge_lock():
            report = merge(r.index_store, plans[0], BuildOptions.of(r.settings.index), lock_after_a_write)
        assert report.abandoned is None
        self.model.update(docs)
        for i in gone:
            self.model.pop(i, None)
        self.unsynced = False

    # -- reads ------------------------------------------------------------------------

    @rule(query=st.sampled_from(QUERIES), k=st.integers(min_value=1, max_value=len(IDS) + 2))
    def search(self, query: str, k: int) -> None:
        hits = self.retriever.search(query, k)
        q = _vector(self.encoder, query, query=True)
        exact = {i: float(_vector(self.encoder, t) @ q) for i, t in self.model.items()}
        best = sorted(exact.values(), reverse=True)[:k]
        assert len(hits) == len(best)
        assert len({h.id for h in hits}) == len(hits)
        for hit, want in zip(hits, best):
            assert hit.id in self.model, f"{hit.id} is not stored"
            assert hit.text == self.model[hit.id]
            # Same rank score as brute force, and the hit's own score is its exact score.
            assert abs(hit.score - want) < 1e-4
            assert abs(hit.score - exact[hit.id]) < 1e-4

    # -- after every step -------------------------------------------------------------

    @invariant()
    def database_matches_model(self) -> None:
        r = self.retriever
        with r.store.read() as snap:
            docs = snap.documents(list(map(int, snap.all_ids())))
        assert {d.external_id: d.text for d in docs.values()} == self.model

    @invariant()
    def verify_agrees(self) -> None:
        report = self.retriever.verify()
        assert report.ok, report.problems
        assert report.documents == len(self.model)
        if not self.unsynced and not self.background:
            assert report.pending == 0
            assert report.indexed == len(self.model)


@pytest.mark.both_databases
def test_store_agrees_with_a_plain_model(db_backend: str, request: pytest.FixtureRequest,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    if db_backend == "postgresql":
        monkeypatch.setattr(StoreMachine, "new_database", request.getfixturevalue("new_postgres_database"))
    run_state_machine_as_test(
        StoreMachine,
        settings=settings(max_examples=25 if db_backend == "sqlite" else 10, stateful_step_count=15, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
