#!/usr/bin/env python
"""Worker throughput against a plain ingest, and search latency while a reindex runs.

    python scripts/bench_worker.py                      # 5,000 docs; reindex at 100,000
    python scripts/bench_worker.py --docs 2000 --reindex-docs 20000

Part 1 writes the same catalog documents into two fresh stores: once with
`Retriever.ingest` (store, embed, publish), once as plain database writes that a
`Worker` then picks up from the change log. Both use the same encoder in this process.

Part 2 builds (or reuses, under the system temp folder) a store of --reindex-docs
catalog documents, measures warm search latency in this process while idle, then again
while a `retrieve reindex` subprocess rebuilds the index, and reports medians and p99.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(REPO))

from retrieval.config import load_settings  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402
from retrieval.sync.worker import Worker  # noqa: E402


def read_catalog(n: int, skip: int = 0) -> list[dict]:
    rows = []
    with open(CATALOG, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < skip:
                continue
            if len(rows) >= n:
                break
            rows.append(json.loads(line))
    return rows


def retriever_at(folder: Path) -> Retriever:
    settings = load_settings(
        overrides={"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index"), "progress": False},
        environ={},
    )
    return Retriever.from_settings(settings)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def part_throughput(n: int) -> dict:
    docs = read_catalog(n)
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        r1 = retriever_at(Path(a))
        r1.encoder.load()
        r1.encoder.encode(["warm up"])
        t0 = time.perf_counter()
        report = r1.ingest(docs, wait=True)  # stored, embedded and published: what is timed
        ingest_s = time.perf_counter() - t0

        r2 = retriever_at(Path(b))
        r2.current_index()
        t0 = time.perf_counter()
        r2.ingest(docs, sync=False)  # plain writes: the change log is all the worker sees
        write_s = time.perf_counter() - t0
        w = Worker(r2)
        cycles = 0
        while r2.status()["pending_changes"]:
            w.run(once=True)
            cycles += 1
        worker_s = time.perf_counter() - t0
        assert r2.verify().ok and r1.verify().ok
        r1.close()
        r2.close()
    return {
        "docs": n,
        "distinct_texts_embedded": report.sync.embedded if report.sync else 0,
        "ingest_s": round(ingest_s, 2),
        "ingest_docs_per_s": round(n / ingest_s, 1),
        "writes_then_worker_s": round(worker_s, 2),
        "plain_writes_s": round(write_s, 2),
        "worker_cycles": cycles,
        "worker_docs_per_s": round(n / worker_s, 1),
        "worker_vs_ingest": round(ingest_s / worker_s, 3),
    }


def part_reindex_latency(n: int, queries: int) -> dict:
    folder = Path(tempfile.gettempdir()) / f"retrieval-bench-store-{n}"
    r = retriever_at(folder)
    if r.status()["documents"] != n:
        print(f"building a {n}-document store in {folder} (embeds once; reused by later runs)", file=sys.stderr)
        r.ingest(read_catalog(n), wait=True)
    qtexts = [d["text"] for d in read_catalog(queries, skip=n if n < 100_000 else 0)]
    qvecs = r.encoder.encode_queries(qtexts)
    r.search_vectors(qvecs[:1], 10)

    def measure(stop_when) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
        vec_lat, full_lat = [], []
        i = 0
        while not stop_when(i):
            q = i % len(qtexts)
            t0 = time.perf_counter()
            r.search_vectors(qvecs[q : q + 1], 10)
            vec_lat.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            r.search(qtexts[q], k=10)
            full_lat.append((time.perf_counter() - t0) * 1000)
            i += 1
        return vec_lat, full_lat

    idle_vec, idle_full = measure(lambda i: i >= queries)
    env = {**os.environ, "RETRIEVE_DATABASE_URL": r.settings.store.database_url, "RETRIEVE_INDEX_DIR": r.settings.store.index_dir,
           "RETRIEVE_PROGRESS": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "reindex", "--json"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    busy_vec, busy_full = measure(lambda i: proc.poll() is not None)
    out, err = proc.communicate()
    reindex_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"reindex failed: {err}")
    # The reader picks up the new version without restarting.
    version_after = r.current_index().manifest.version
    r.close()

    def summary(values: list[float]) -> dict:
        return {"n": len(values), "p50_ms": round(statistics.median(values), 3), "p99_ms": round(pct(values, 99), 3),
                "min_ms": round(min(values), 3), "max_ms": round(max(values), 3)}

    return {
        "docs": n,
        "reindex_s": round(reindex_s, 2),
        "reindex_report": json.loads(out),
        "new_version_loaded": version_after,
        "idle_search_vectors": summary(idle_vec),
        "idle_search_with_encoding": summary(idle_full),
        "during_reindex_search_vectors": summary(busy_vec),
        "during_reindex_search_with_encoding": summary(busy_full),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--reindex-docs", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=300)
    args = ap.parse_args()
    result = {"throughput": part_throughput(args.docs), "reindex_latency": part_reindex_latency(args.reindex_docs, args.queries)}
    t, lat = result["throughput"], result["reindex_latency"]
    print(f"worker {t['worker_docs_per_s']} docs/s vs ingest {t['ingest_docs_per_s']} docs/s "
          f"(ratio {t['worker_vs_ingest']}); search p50/p99 idle {lat['idle_search_vectors']['p50_ms']}/"
          f"{lat['idle_search_vectors']['p99_ms']} ms, during reindex {lat['during_reindex_search_vectors']['p50_ms']}/"
          f"{lat['during_reindex_search_vectors']['p99_ms']} ms", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
