#!/usr/bin/env python
"""Ingest throughput on PostgreSQL against SQLite, without embedding: documents/s of
``Store.upsert`` and vectors/s of ``Store.add_embeddings``, both databases measured in
this process on the same documents.

The documents are the first ``--docs`` rows of ``../shared/data/catalog/catalog.jsonl``.
For each database and each of ``--repeats`` repeats (a fresh SQLite file and a fresh
PostgreSQL database each time; opening the store and migrating it are not timed):

* ``ingest``: the documents stored into the empty store;
* ``unchanged``: the same documents again (every one unchanged: the no-op path);
* ``update``: again with 10% of the texts changed (every tenth document);
* ``vectors``: ``add_embeddings`` of random float32 384-d unit vectors (made before
  timing) for the distinct content hashes of the documents.

Batches are those of ``retrieve ingest``: ``Retriever.ingest_files`` writes every
document of its input in one ``Store.upsert`` (one transaction), so ``--batch`` is 0
(everything in one call) by default; vectors are committed ``EMBED_CHUNK`` (4,096) at a
time by ``embed_missing``, the ``--vector-batch`` default. Reported: medians, and the
ratio PostgreSQL/SQLite of each throughput; the target is PostgreSQL's first ingest
within 1.5x of SQLite's (ratio >= 0.667).

PostgreSQL is a server of its own, started in a temporary folder with scripts/postgres.sh
and RETRIEVAL_PG_DURABLE=1 (fsync on, as SQLite's synchronous=FULL), and stopped at the
end, unless ``--postgres-url`` names one (its durability settings are then reported).

    python scripts/bench_postgres.py                 # 100,000 documents, 3 repeats
    python scripts/bench_postgres.py --quick         # 2,000 documents, 1 repeat
    python scripts/bench_postgres.py --postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres

Prints a table to stderr and one JSON line to stdout; writes the JSON to ``--out``
(bench/postgres_ingest.json; bench/postgres_ingest_quick.json with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog.jsonl"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import catalog_documents, machine  # noqa: E402
from retrieval.store.records import NewDocument, content_hash  # noqa: E402
from retrieval.store.repository import Store  # noqa: E402
from retrieval.sync.vectors import EMBED_CHUNK  # noqa: E402

PASSES = ("ingest", "unchanged", "update", "vectors")
TARGET_RATIO = 1 / 1.5  # PostgreSQL's first ingest within 1.5x of SQLite's
DIM = 384
MODEL_KEY = "bench-random-384"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def changed(docs: Sequence[NewDocument], every: int = 10) -> list[NewDocument]:
    """The documents with every ``every``-th text changed (10% by default)."""
    return [NewDocument(d.external_id, d.text + " (revised)", d.metadata) if i % every == 0 else d
            for i, d in enumerate(docs)]


def unit_vectors(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if size <= 0:
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


def timed(fn: Callable[[Any], Any], parts: Sequence[Any]) -> tuple[float, list[Any]]:
    out = []
    t0 = time.perf_counter()
    for part in parts:
        out.append(fn(part))
    return time.perf_counter() - t0, out


# -- PostgreSQL -----------------------------------------------------------------------


def conninfo(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def admin(url: str) -> Any:
    import psycopg

    return psycopg.connect(conninfo(url), autocommit=True)


@contextmanager
def postgres_server(url: str | None) -> Iterator[tuple[str, bool]]:
    """(admin URL, started here): the server given, or a durable one of our own."""
    if url:
        yield url, False
        return
    script = REPO / "scripts" / "postgres.sh"
    folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
    try:
        env = {**os.environ, "RETRIEVAL_PG_DURABLE": "1"}
        started = subprocess.run(["bash", str(script), "start", str(folder)], env=env, capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"cannot start PostgreSQL with {script}: {started.stderr.strip()}")
        try:
            yield started.stdout.strip(), True
        finally:
            subprocess.run(["bash", str(script), "stop", str(folder)], capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def server_info(url: str) -> dict[str, Any]:
    with admin(url) as conn:
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0]
                    for name in ("server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
                                 "shared_buffers")}
    settings["durable"] = settings["fsync"] == "on" and settings["synchronous_commit"] == "on"
    return settings


@contextmanager
def fresh_postgres(admin_url: str) -> Iterator[str]:
    from sqlalchemy.engine import make_url

    name = f"bench_{uuid.uuid4().hex[:12]}"
    with admin(admin_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin(admin_url) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_sqlite(work: Path) -> Iterator[str]:
    folder = work / f"sqlite-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    try:
        yield f"sqlite:///{folder / 'retrieval.db'}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# -- one run --------------------------------------------------------------------------


def run_once(url: str, docs: list[NewDocument], updated: list[NewDocument], vectors: list[tuple[str, np.ndarray]],
             batch: int, vector_batch: int) -> dict[str, Any]:
    """Seconds and counts of every pass on one fresh database."""
    store = Store.open(url)  # with its migration: not timed
    try:
        out: dict[str, Any] = {}
        for name, batch_docs in (("ingest", docs), ("unchanged", docs), ("update", updated)):
            seconds, counts = timed(store.upsert, batches(batch_docs, batch))
            out[name] = {"seconds": seconds, "added": sum(c.added for c in counts),
                         "updated": sum(c.updated for c in counts), "unchanged": sum(c.unchanged for c in counts)}
        seconds, _ = timed(lambda part: store.add_embeddings(MODEL_KEY, DIM, part), batches(vectors, vector_batch))
        with store.connection() as conn:
            stored = conn.exec_driver_sql("SELECT count(*) FROM embeddings").scalar_one()
        out["vectors"] = {"seconds": seconds, "stored": int(stored)}
        return out
    finally:
        store.close()


def check(run: dict[str, Any], n: int, n_updated: int, n_vectors: int, db: str) -> None:
    expected = {"ingest": (n, 0, 0), "unchanged": (0, 0, n), "update": (0, n_updated, n - n_updated)}
    for name, (added, updated, unchanged) in expected.items():
        got = run[name]
        if (got["added"], got["updated"], got["unchanged"]) != (added, updated, unchanged):
            raise SystemExit(f"{db} {name}: counts {got} differ from the expected {added}/{updated}/{unchanged}")
    if run["vectors"]["stored"] != n_vectors:
        raise SystemExit(f"{db} vectors: {run['vectors']['stored']} stored, expected {n_vectors}")


def summary(seconds: list[float], items: int) -> dict[str, Any]:
    med = statistics.median(seconds)
    return {"seconds": {"median": round(med, 4), "min": round(min(seconds), 4), "max": round(max(seconds), 4),
                        "runs": [round(s, 4) for s in seconds]},
            "per_second": round(items / med, 1) if med > 0 else None}


def table(result: dict[str, Any]) -> str:
    pg = result["postgresql"]
    lines = [
        result["machine"],
        f"{result['documents']:,} documents ({result['distinct_texts']:,} distinct texts), "
        f"batch {result['batch'] or 'all'} documents / {result['vector_batch']:,} vectors per transaction, "
        f"{result['repeats']} repeat(s), medians",
        f"PostgreSQL {pg['server_version']} (fsync={pg['fsync']}, synchronous_commit={pg['synchronous_commit']}, "
        f"{'started here' if pg['started_here'] else 'given'}); SQLite {result['sqlite']['version']} (WAL, synchronous=FULL)",
        "",
        f"{'pass':<10} {'items':>8} {'SQLite /s':>12} {'PostgreSQL /s':>14} {'PG/SQLite':>10}",
    ]
    for name in PASSES:
        row = result["passes"][name]
        lines.append(f"{name:<10} {row['items']:>8,} {row['sqlite']['per_second']:>12,.0f} "
                     f"{row['postgresql']['per_second']:>14,.0f} {row['ratio']:>10.3f}")
    met = result["target_met"]
    lines.append("")
    lines.append(f"target: PostgreSQL first ingest within 1.5x of SQLite (ratio >= {TARGET_RATIO:.3f}): "
                 f"{'met' if met else 'NOT met'} (ratio {result['passes']['ingest']['ratio']:.3f})")
    if not pg["durable"]:
        lines.append("note: the PostgreSQL server is not durable (fsync or synchronous_commit off): "
                     "the comparison with SQLite's synchronous=FULL favours PostgreSQL")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="documents: the first rows of --catalog")
    parser.add_argument("--repeats", type=int, default=3, help="runs of every pass, each on fresh databases")
    parser.add_argument("--batch", type=int, default=0,
                        help="documents per Store.upsert (one transaction); 0: all in one, as `retrieve ingest` does")
    parser.add_argument("--vector-batch", type=int, default=EMBED_CHUNK,
                        help=f"vectors per add_embeddings (one transaction); {EMBED_CHUNK} as embed_missing commits them")
    parser.add_argument("--catalog", type=Path, default=CATALOG, help="catalog JSONL (id, text, metadata)")
    parser.add_argument("--postgres-url", help="an existing server's admin URL (default: start a durable one)")
    parser.add_argument("--out", type=Path, help="where the JSON goes (default bench/postgres_ingest.json; "
                        "bench/postgres_ingest_quick.json with --quick)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2,000 documents, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.repeats = 2_000, 1
    if args.out is None:  # a smoke run never overwrites the real figures
        args.out = REPO / "bench" / ("postgres_ingest_quick.json" if args.quick else "postgres_ingest.json")

    import sqlite3

    docs = catalog_documents(args.catalog, args.docs)
    updated = changed(docs)
    n_updated = sum(a.text != b.text for a, b in zip(docs, updated))
    hashes = list(dict.fromkeys(content_hash(d.text) for d in docs))
    vectors = list(zip(hashes, unit_vectors(len(hashes), args.seed)))
    log(f"{len(docs):,} documents, {len(hashes):,} distinct texts, {n_updated:,} changed in the update pass")

    seconds: dict[str, dict[str, list[float]]] = {db: {p: [] for p in PASSES} for db in ("sqlite", "postgresql")}
    work = Path(tempfile.mkdtemp(prefix="bench-postgres-sqlite-"))
    try:
        with postgres_server(args.postgres_url) as (admin_url, started):
            pg = {**server_info(admin_url), "started_here": started}
            log(f"PostgreSQL {pg['server_version']} at {admin_url} (fsync={pg['fsync']}, "
                f"synchronous_commit={pg['synchronous_commit']})")
            for rep in range(args.repeats):
                # Alternate which database goes first, so neither always gets a cold page cache.
                order = ("sqlite", "postgresql") if rep % 2 == 0 else ("postgresql", "sqlite")
                for db in order:
                    fresh = fresh_sqlite(work) if db == "sqlite" else fresh_postgres(admin_url)
                    with fresh as url:
                        run = run_once(url, docs, updated, vectors, args.batch, args.vector_batch)
                    check(run, len(docs), n_updated, len(hashes), db)
                    for p in PASSES:
                        seconds[db][p].append(run[p]["seconds"])
                    log(f"  repeat {rep + 1} {db:<10} " + ", ".join(f"{p} {run[p]['seconds']:.3f}s" for p in PASSES))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    items = {"ingest": len(docs), "unchanged": len(docs), "update": len(docs), "vectors": len(hashes)}
    passes: dict[str, Any] = {}
    for p in PASSES:
        lite, post = summary(seconds["sqlite"][p], items[p]), summary(seconds["postgresql"][p], items[p])
        ratio = post["per_second"] / lite["per_second"] if lite["per_second"] and post["per_second"] else None
        passes[p] = {"items": items[p], "unit": "vectors" if p == "vectors" else "documents",
                     "sqlite": lite, "postgresql": post, "ratio": round(ratio, 4) if ratio is not None else None}
    ratio = passes["ingest"]["ratio"]
    result: dict[str, Any] = {
        "machine": machine(),
        "documents": len(docs),
        "distinct_texts": len(hashes),
        "updated_documents": n_updated,
        "batch": args.batch,
        "vector_batch": args.vector_batch,
        "repeats": args.repeats,
        "dim": DIM,
        "postgresql": pg,
        "sqlite": {"version": sqlite3.sqlite_version, "journal_mode": "wal", "synchronous": "FULL"},
        "passes": passes,
        "target_ratio": round(TARGET_RATIO, 4),
        "target_met": ratio is not None and ratio >= TARGET_RATIO,
        "command": "python scripts/bench_postgres.py " + " ".join(sys.argv[1:]),
    }
    log("\n" + table(result))
    line = json.dumps(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
