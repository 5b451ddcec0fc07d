"""Crash safety shown by real kills.

:func:`run_chaos` starts ``retrieve ingest``, ``sync``, ``worker``, ``reindex`` or
``compact`` (the merge operation: it merges the segments that syncs made) as a real
process on a scratch store, kills it with SIGKILL at a random moment, restarts
(``retrieve sync``) and checks what a user relies on:

* every document the killed process had reported as stored (and every document the
  harness committed itself, as another program writing to the database would) is present
  with its latest text and is found by a search for that text;
* a killed ingest is all-or-nothing: its documents hold either all their new texts or
  all their old ones;
* ``retrieve verify`` reports no drift and nothing pending; every indexed id is a
  stored document; the index loads.

Kill moments are drawn three ways, so that kills land everywhere: *early* (interpreter
start, imports, model loading), *timed* (uniform over the operation's observed run time:
mostly reading and embedding), and *step* (a fault-injection hook pauses the process
just before its n-th durable step of an index publish -- an fsync, a rename or the
pointer switch -- and the kill lands there). Kills that land while the child holds the
merge lock (a merge in ``compact`` or in the worker's background thread) are counted.

Then the special cases: an index file truncated or filled with garbage (detected and
rebuilt), an index write that fails half-way with ENOSPC (the previous version keeps
serving, the error is clear, nothing is lost), and a database locked by another writer
for longer than the busy timeout (clear one-line error, nothing written, nothing lost).

The fault-injection hook is the ``sitecustomize`` module in ``retrieval/selftest/hook/``,
put first on the children's ``PYTHONPATH``; it does nothing unless ``RETRIEVAL_CHAOS_*``
variables ask for it, and it never changes what the code under test does, only when it
pauses (step kills) or that one write fails (ENOSPC).

>>> report = run_chaos("/tmp/chaos-store", iterations=20, seed=7)   # doctest: +SKIP
>>> report.ok, report.kills                                         # doctest: +SKIP
(True, {'ingest': 4, 'sync': 4, 'worker': 4, 'reindex': 4, 'merge': 4})
"""

from __future__ import annotations

import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retrieval.config import Settings
from retrieval.index.rows import docs_of
from retrieval.index.store import MERGE_LOCK, lock_held
from retrieval.selftest.report import ChaosReport, Run
from retrieval.selftest.scratch import scratch_settings, text_pool, worker_available, write_config

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

OPERATIONS = ("ingest", "sync", "worker", "reindex", "merge")
SPECIAL_CASES = ("truncated-index", "garbage-index", "garbage-manifest", "disk-full", "database-locked")

# Durable steps of one index publish seen by the hook: each file written (segment, ids,
# tombstones, manifest) is an fsync, a read-back, a rename and a folder fsync, then the
# pointer's fsync, replace and folder fsync; a step kill pauses before one of them.
PUBLISH_STEPS = 15

HOOK_ENV = "RETRIEVAL_CHAOS_"  # not RETRIEVE_: those are settings and would be rejected

# The fault-injection hook: a real module, put first on the children's PYTHONPATH.
HOOK_DIR = Path(__file__).resolve().parent / "hook"


class _Harness:
    def __init__(self, store_dir: Path, settings: Settings, rng: random.Random, report: ChaosReport,
                 restart: str, echo: Callable[[str], None]) -> None:
        self.dir = store_dir
        self.settings = settings
        self.rng = rng
        self.report = report
        self.restart_mode = restart
        self.echo = echo
        self.hook_dir = HOOK_DIR
        self.expected: dict[str, str] = {}  # external id -> latest text stored
        self.used_texts: set[str] = set()
        self.pool = text_pool(rng)
        self.durations: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        self._retriever: Retriever | None = None
        self._serial = 0

    # -- set-up -----------------------------------------------------------------------

    def prepare(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_config(self.dir / "config.yaml", self.settings)
        self.ingest_direct(self.new_docs(self.rng.randint(30, 60)))
        self.retriever.sync()

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            from retrieval.retriever import Retriever

            self._retriever = Retriever.from_settings(self.settings)
        return self._retriever

    def close(self) -> None:
        if self._retriever is not None:
            self._retriever.close()
            self._retriever = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_") and not k.startswith(HOOK_ENV)}
        env["RETRIEVE_PROGRESS"] = "false"
        env["PYTHONPATH"] = os.pathsep.join([str(self.hook_dir)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env[HOOK_ENV + "INDEX_DIR"] = str(Path(self.settings.store.index_dir).resolve())
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.update(extra)
        return env

    # -- documents --------------------------------------------------------------------

    def _fresh_text(self) -> str:
        while True:
            text = self.pool[self.rng.randrange(len(self.pool))]
            if text not in self.used_texts:
                self.used_texts.add(text)
                return text
            if len(self.used_texts) >= len(self.pool):
                self._serial += 1
                text = f"{text} (variant {self._serial})"
                self.used_texts.add(text)
                return text

    def new_docs(self, n: int) -> dict[str, str]:
        docs = {}
        for _ in range(n):
            self._serial += 1
            docs[f"chaos-{self._serial:06d}"] = self._fresh_text()
        return docs

    def change_set(self, n: int) -> dict[str, str]:
        """About a fifth updates of existing documents (new texts), the rest new ids."""
        n_updates = min(len(self.expected), n // 5)
        docs = {i: self._fresh_text() for i in self.rng.sample(sorted(self.expected), n_updates)}
        docs.update(self.new_docs(n - n_updates))
        return docs

    def ingest_direct(self, docs: dict[str, str]) -> None:
        """Commit documents without syncing, as another program writing to the database would."""
        self.retriever.ingest([{"id": k, "text": v} for k, v in docs.items()], sync=False, executor="local")
        self.expected.update(docs)

    def delete_some(self) -> None:
        n = self.rng.randint(0, min(8, len(self.expected) // 10))
        if n:
            gone = self.rng.sample(sorted(self.expected), n)
            self.retriever.delete(gone, sync=False)
            for g in gone:
                del self.expected[g]

    # -- processes --------------------------------------------------------------------

    def spawn(self, args: Sequence[str], **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "retrieval", *args], cwd=self.dir, env=self.env(**env),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def run(self, args: Sequence[str], timeout: float = 600, env: dict[str, str] | None = None) -> Run:
        t0 = time.monotonic()
        proc = self.spawn(args, **(env or {}))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            return Run(None, out, err + f"\n(timed out after {timeout:.0f}s)", time.monotonic() - t0, True)
        return Run(proc.returncode, out, err, time.monotonic() - t0, False)

    def estimate(self, op: str) -> float:
        """How long ``op`` runs, for aiming timed kills: its measured median, else a guess.

        A worker never finishes by itself, so it has no measured run time; its busy part
        (start-up, the backlog, the writes made while it runs) takes a few times as long
        as one finished operation here, which scales the guess to this machine and model.
        """
        seen = self.durations[op]
        if seen:
            return statistics.median(seen[-7:])
        if op == "worker":
            finished = [d for other in OPERATIONS if other != "worker" for d in self.durations[other][-7:]]
            return max(2.0, 3 * statistics.median(finished)) if finished else 12.0
        return 8.0

    def run_and_kill(self, op: str, args: Sequence[str], plan: str,
                     during: Sequence[tuple[float, Callable[[], None]]] = ()) -> Run:
        """Start ``args``, run the ``during`` actions at their times, SIGKILL per ``plan``."""
        marker = self.dir / "chaos-marker"
        marker.unlink(missing_ok=True)
        extra: dict[str, str] = {}
        deadline = float("inf")
        if plan == "early":
            deadline = self.rng.uniform(0.0, 1.5)
        elif plan == "timed":
            deadline = self.rng.uniform(0.0, self.estimate(op) * 1.1)
        else:  # step: pause before the n-th durable step of an index publish
            publishes = 3 if op == "worker" else 1
            extra = {HOOK_ENV + "PAUSE_AT": str(self.rng.randint(1, PUBLISH_STEPS * publishes)),
                     HOOK_ENV + "MARKER": str(marker)}
            deadline = max(self.estimate(op) * 4, 60.0)  # a safety net: the marker decides
        actions = sorted(during, key=lambda a: a[0])
        t0 = time.monotonic()
        proc = self.spawn(args, **extra)
        where = ""
        while True:
            now = time.monotonic() - t0
            while actions and actions[0][0] <= now:
                actions.pop(0)[1]()
            if proc.poll() is not None:
                break
            if marker.exists():
                where = marker.read_text(encoding="utf-8", errors="replace")
                break
            if now >= deadline:
                break
            time.sleep(0.01)
        killed = proc.poll() is None
        merging = killed and bool(lock_held(Path(self.settings.store.index_dir) / MERGE_LOCK))
        if killed:
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate()
        for _, action in actions:  # writes planned after the process ended still happen
            action()
        return Run(None if killed else proc.returncode, out, err, time.monotonic() - t0, killed, where, merging)

    # -- checks -----------------------------------------------------------------------

    def restart(self, label: str) -> bool:
        """What a user does after a crash: `retrieve sync`."""
        if self.restart_mode == "in-process":
            try:
                self.retriever.sync()
            except Exception as exc:
                self.fail(f"{label}: sync after the kill failed: {exc!r}")
                return False
            return True
        run = self.run(["sync"])
        if run.returncode != 0:
            self.fail(f"{label}: `retrieve sync` after the kill exited {run.returncode}: {run.tail()}")
            return False
        self.durations["sync"].append(run.seconds)
        return True

    def fail(self, message: str) -> None:
        self.report.failures.append(message)
        self.echo(f"FAILURE {message}")

    def check(self, label: str, touched: Iterable[str] = ()) -> None:
        """Database, index and searches agree with what was reported stored."""
        r = self.retriever
        with r.store.read() as snap:
            docs = snap.documents(list(map(int, snap.all_ids())))
            rows = {d.external_id: (d.id, d.text) for d in docs.values()}
        lost = [i for i, t in self.expected.items() if i not in rows or rows[i][1] != t]
        if lost:
            self.report.documents_lost += len(lost)
            shown = ", ".join(f"{i} ({'missing' if i not in rows else 'old text'})" for i in lost[:5])
            self.fail(f"{label}: {len(lost)} stored documents lost or stale: {shown}")
        extra = sorted(set(rows) - set(self.expected))
        if extra:
            self.fail(f"{label}: {len(extra)} documents nobody stored: {', '.join(extra[:5])}")
        run = self.run(["verify", "--json"])
        try:
            verify = json.loads(run.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.report.drift_found += 1
            self.fail(f"{label}: `retrieve verify --json` exited {run.returncode} without a report: {run.tail()}")
            return
        if not verify["ok"] or run.returncode != 0:
            self.report.drift_found += max(1, len(verify["problems"]))
            self.fail(f"{label}: verify found drift: {verify['problems'][:5]}")
        if verify["pending"]:
            self.fail(f"{label}: {verify['pending']} changes still pending after `retrieve sync`")
        try:
            version = r.index_store.load()
        except Exception as exc:
            self.fail(f"{label}: the index does not load: {exc}")
            return
        if version is None:
            self.fail(f"{label}: there is no index after `retrieve sync`")
            return
        db_ids = {doc_id for doc_id, _ in rows.values()}
        orphans = {int(i) for i in docs_of(version.ids, version.bits)} - db_ids
        if orphans:
            self.report.drift_found += len(orphans)
            self.fail(f"{label}: vectors of {len(orphans)} documents the database does not hold are in the index: "
                      f"{sorted(orphans)[:5]}")
        self.check_search(label, [t for t in touched if t in self.expected])

    def check_search(self, label: str, touched: Sequence[str]) -> None:
        """A search for a document's latest text finds it (touched ones plus a sample)."""
        others = sorted(set(self.expected) - set(touched))
        ids = list(touched)[:80] + self.rng.sample(others, min(20, len(others)))
        if not ids:
            return
        results = self.retriever.search_many([self.expected[i] for i in ids], 5)
        missed = [i for i, hits in zip(ids, results) if i not in {h.id for h in hits}]
        if missed:
            self.report.documents_lost += len(missed)
            self.fail(f"{label}: a search for their latest text does not find {len(missed)} documents: {missed[:5]}")
        stray = {h.id for hits in results for h in hits} - set(self.expected)
        if stray:
            self.fail(f"{label}: searches return documents that are not stored: {sorted(stray)[:5]}")

    # -- one kill ---------------------------------------------------------------------

    def iteration(self, n: int, op: str) -> None:
        label = f"iteration {n} ({op})"
        self.delete_some()
        for attempt in range(5):
            weights = [10, 30, 60] if op == "merge" else [15, 55, 30]
            plan = self.rng.choices(["early", "timed", "step"], weights=weights)[0]
            if attempt:
                # The process outran its kill: aim inside its measured run time, or at a
                # named step of it (a fast run, such as a small store's reindex, can
                # outrun a timed kill more than once).
                plan = "timed" if attempt % 2 else "step"
            touched, run = self.attempt(op, plan, label)
            if run.killed:
                self.report.kills[op] = self.report.kills.get(op, 0) + 1
                self.report.kills_during_merge += int(run.merging)
                self.report.kill_plans[plan] = self.report.kill_plans.get(plan, 0) + 1
                self.echo(f"{label}: killed after {run.seconds:.1f}s ({plan}{': ' + run.where if run.where else ''}"
                          f"{', merging' if run.merging else ''})")
                break
            self.report.finished_before_kill += 1
            self.durations[op].append(run.seconds)
            if op == "worker" or run.returncode != 0:  # a worker runs until it is stopped
                self.fail(f"{label}: `retrieve {op}` exited {run.returncode} before its kill: {run.tail()}")
                break
        if self.restart(label):
            self.check(label, touched)

    def attempt(self, op: str, plan: str, label: str) -> tuple[list[str], Run]:
        if op == "ingest":
            docs = self.change_set(self.rng.randint(20, 200))
            path = self.dir / "chaos-ingest.jsonl"
            path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()), encoding="utf-8")
            before = {k: self.expected.get(k) for k in docs}
            run = self.run_and_kill(op, ["ingest", str(path)], plan)
            if not run.killed and run.returncode == 0:
                self.expected.update(docs)  # it printed its summary: every document is stored
            else:
                self.adopt_partial(label, docs, before)
            return list(docs), run
        if op == "sync":
            docs = self.change_set(self.rng.randint(20, 200))
            self.ingest_direct(docs)
            return list(docs), self.run_and_kill(op, ["sync"], plan)
        if op == "merge":
            # Syncs of small change sets make segments; `retrieve compact` merges them.
            touched: list[str] = []
            for _ in range(self.rng.randint(2, 4)):
                docs = self.change_set(self.rng.randint(10, 60))
                self.ingest_direct(docs)
                self.retriever.sync(inline_merges=False)
                touched += list(docs)
            later = self.change_set(self.rng.randint(5, 30))
            touched += list(later)
            during = [(self.rng.uniform(0.2, self.estimate(op)), lambda d=later: self.ingest_direct(d))]
            return touched, self.run_and_kill(op, ["compact"], plan, during)
        if op == "reindex":
            docs = self.change_set(self.rng.randint(0, 80)) if self.rng.random() < 0.5 else {}
            if docs:
                self.ingest_direct(docs)
            return list(docs), self.run_and_kill(op, ["reindex"], plan)
        # worker: documents arrive before it starts and while it runs
        docs = self.change_set(self.rng.randint(10, 100))
        self.ingest_direct(docs)
        touched = list(docs)
        during = []
        for _ in range(self.rng.randint(1, 3)):
            later = self.change_set(self.rng.randint(5, 60))
            touched += list(later)
            during.append((self.rng.uniform(0.5, self.estimate(op)), lambda d=later: self.ingest_direct(d)))
        run = self.run_and_kill(op, ["worker", "--poll-interval", "0.2"], plan, during)
        return touched, run

    def adopt_partial(self, label: str, docs: dict[str, str], before: dict[str, str | None]) -> None:
        """A killed ingest may have committed: its documents must be all new or all old."""
        with self.retriever.store.read() as snap:
            ids = list(map(int, snap.all_ids()))
            now = {d.external_id: d.text for d in snap.documents(ids).values() if d.external_id in docs}
        changed = {k for k, v in docs.items() if v != before[k]}
        applied = {k for k in changed if now.get(k) == docs[k]}
        if applied and applied != changed:
            self.fail(f"{label}: the killed ingest left {len(applied)} of {len(changed)} documents applied (not atomic)")
        for k in docs:
            if k in now:
                if now[k] not in (docs[k], before[k]):
                    self.fail(f"{label}: document {k} holds a text nobody wrote")
                self.expected[k] = now[k]

    # -- special cases ----------------------------------------------------------------

    def special(self, name: str) -> None:
        problems: list[str] = []
        try:
            getattr(self, "case_" + name.replace("-", "_"))(problems)
        except Exception as exc:
            problems.append(f"raised {exc!r}")
        self.report.special_cases[name] = "ok" if not problems else "; ".join(problems)
        for p in problems:
            self.fail(f"{name}: {p}")
        self.echo(f"special case {name}: {self.report.special_cases[name]}")

    def _current_file(self, filename: str) -> Path:
        """The current manifest ("manifest.json") or its largest segment file ("index.faiss")."""
        store = self.retriever.index_store
        name = store.current_name()
        assert name is not None, "no index generation to damage"
        if filename == "manifest.json":
            return store.manifests_dir / name
        manifest = store.read_manifest(name)
        assert manifest is not None and manifest.segments, "no segment to damage"
        return store.root / max(manifest.segments, key=lambda s: s.rows).faiss.path

    def _corrupt_and_recover(self, problems: list[str], damage: Callable[[Path], None], filename: str) -> None:
        self.retriever.sync()
        path = self._current_file(filename)
        old = self.retriever.index_store.current_name()
        damage(path)
        run = self.run(["verify", "--json"])
        if run.returncode != 0:
            problems.append(f"`retrieve verify` exited {run.returncode} on a damaged index: {run.tail()}")
        elif "Traceback" in run.stderr:
            problems.append(f"a traceback instead of a warning: {run.tail()}")
        if not any(w in run.stderr.lower() for w in ("corrupt", "truncated", "unreadable", "checksum")):
            problems.append(f"the damage was not reported: {run.stderr.strip()[-300:]!r}")
        if self.retriever.index_store.current_name() == old:
            problems.append("the damaged version was not replaced by a rebuilt one")
        self.check(f"after the damaged {filename}")

    def case_truncated_index(self, problems: list[str]) -> None:
        def truncate(p: Path) -> None:
            with open(p, "r+b") as fh:
                fh.truncate(p.stat().st_size // 2)

        self._corrupt_and_recover(problems, truncate, "index.faiss")

    def case_garbage_index(self, problems: list[str]) -> None:
        def garbage(p: Path) -> None:
            p.write_bytes(self.rng.randbytes(p.stat().st_size))

        self._corrupt_and_recover(problems, garbage, "index.faiss")

    def case_garbage_manifest(self, problems: list[str]) -> None:
        def garbage(p: Path) -> None:
            p.write_bytes(b"\x00garbage{")

        self._corrupt_and_recover(problems, garbage, "manifest.json")

    def case_disk_full(self, problems: list[str]) -> None:
        self.retriever.sync()
        old = self.retriever.index_store.current_name()
        index_dir = Path(self.settings.store.index_dir)
        # Files left by writers killed earlier stay until garbage collection (an hour).
        crashed_before = {str(p) for p in index_dir.rglob(".tmp-*")}
        docs = self.change_set(30)
        path = self.dir / "chaos-ingest.jsonl"
        path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()), encoding="utf-8")
        run = self.run(["ingest", str(path)], env={HOOK_ENV + "ENOSPC": "1"})
        if run.returncode == 0:
            problems.append("the ingest succeeded: the disk-full fault was not injected (has the index writer changed?)")
            self.expected.update(docs)
            return
        err = run.stderr.strip()
        if "no space left" not in err.lower():
            problems.append(f"the error does not say the disk is full: {err[-300:]!r}")
        if "Traceback" in err:
            problems.append(f"a traceback instead of a one-line error: {err.splitlines()[-1][:300]!r}")
        if self.retriever.index_store.current_name() != old:
            problems.append("CURRENT moved to a version whose write failed")
        leftovers = sorted({str(p) for p in index_dir.rglob(".tmp-*")} - crashed_before)
        if leftovers:
            problems.append(f"the half-written version was left behind: {leftovers}")
        try:
            version = self.retriever.index_store.load()
            if version is None or version.manifest.filename != old:
                problems.append("the previous version does not load")
        except Exception as exc:
            problems.append(f"the previous version does not load: {exc}")
        # The documents were committed before the publish failed: they are stored, and a
        # search finds them already (exactly, from the pending changes).
        self.adopt_partial("disk-full", docs, {k: self.expected.get(k) for k in docs})
        missing = [k for k in docs if self.expected.get(k) != docs[k]]
        if missing:
            problems.append(f"{len(missing)} of the ingested documents are not stored (the error should say so if intended)")
        self.check_search("disk-full (index stale)", [k for k in docs if k in self.expected])
        if self.restart("disk-full"):
            self.check("after disk-full", list(docs))

    def case_database_locked(self, problems: list[str]) -> None:
        self.retriever.sync()
        docs = self.change_set(20)
        path = self.dir / "chaos-ingest.jsonl"
        path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs.items()), encoding="utf-8")
        before = {k: self.expected.get(k) for k in docs}
        from retrieval.store.db import hold_write_lock

        with hold_write_lock(self.settings.store.database_url):
            run = self.run(["ingest", str(path)], env={"RETRIEVE_BUSY_TIMEOUT_MS": "500"})
        err_lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
        if run.returncode == 0:
            problems.append("the ingest succeeded while another writer held the lock")
            self.expected.update(docs)
        else:
            if not err_lines or "locked" not in err_lines[-1].lower() or not err_lines[-1].startswith("Error:"):
                problems.append(f"no clear error: {run.stderr.strip()[-300:]!r}")
            if "Traceback" in run.stderr:
                problems.append("a traceback instead of a one-line error")
            with self.retriever.store.read() as snap:
                ids = list(map(int, snap.all_ids()))
                stored = snap.documents(ids)
                now = {d.external_id: d.text for d in stored.values() if d.external_id in docs}
            written = [k for k in docs if now.get(k) != before[k]]
            if written:
                problems.append(f"{len(written)} documents were written although the ingest failed")
            # Nothing lost: once the lock is gone, the same documents go in (in this
            # process: the point is the store's state, not another model load), published
            # before the check below, which expects nothing pending.
            self.retriever.ingest([{"id": k, "text": v} for k, v in docs.items()], executor="local", wait=True)
            self.expected.update(docs)
        self.check("after database-locked", list(docs))


def run_chaos(
    store_dir: str | os.PathLike[str],
    iterations: int = 50,
    seed: int | None = None,
    operations: Sequence[str] = OPERATIONS,
    *,
    settings: Settings | None = None,
    special_cases: Sequence[str] = SPECIAL_CASES,
    restart: str = "process",
    echo: Callable[[str], None] | None = None,
    **overrides: Any,
) -> ChaosReport:
    """Kill ``iterations`` operations at random moments on a scratch store and check that
    nothing was lost and nothing drifted; then run ``special_cases``.

    ``store_dir`` must be empty or absent: it holds the scratch database, index and logs.
    ``settings`` (default: built-in defaults) give the model and index settings, with
    ``overrides`` applied; database and index always point into ``store_dir``.
    ``restart`` is ``"process"`` (a real ``retrieve sync`` after each kill) or
    ``"in-process"`` (the same sync in this process: saves a model load per kill).
    """
    unknown = set(operations) - set(OPERATIONS)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}; choose from {', '.join(OPERATIONS)}")
    unknown = set(special_cases) - set(SPECIAL_CASES)
    if unknown:
        raise ValueError(f"unknown special cases {sorted(unknown)}; choose from {', '.join(SPECIAL_CASES)}")
    if restart not in ("process", "in-process"):
        raise ValueError("restart must be 'process' or 'in-process'")
    folder = Path(store_dir)
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} is not empty: give run_chaos a new scratch folder")
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    report = ChaosReport(seed=seed)
    ops = list(operations)
    if "worker" in ops and not worker_available():
        ops.remove("worker")
        report.skipped.append("worker: this version has no `retrieve worker` command")
    t0 = time.monotonic()
    harness = _Harness(folder, scratch_settings(folder, settings, **overrides), random.Random(seed), report, restart,
                       echo or (lambda _msg: None))
    try:
        harness.prepare()
        if ops:
            for n in range(1, iterations + 1):
                # Round-robin over the operations, in a shuffled order per round.
                if (n - 1) % len(ops) == 0:
                    harness.rng.shuffle(ops)
                harness.iteration(n, ops[(n - 1) % len(ops)])
                report.iterations = n
        for name in special_cases:
            harness.special(name)
        with harness.retriever.store.read() as snap:
            report.documents = len(snap.all_ids())
    finally:
        harness.close()
        report.seconds = time.monotonic() - t0
    return report
