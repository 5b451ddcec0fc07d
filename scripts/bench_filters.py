#!/usr/bin/env python
"""Filtered search: p50 at 1%, 10% and 50% selectivity on the 100,000-document catalog
store, next to the unfiltered p50, without query encoding.

The store holds ``../shared/data/catalog/catalog-100k.jsonl`` (texts embedded once with the
configured model, all-MiniLM-L6-v2 by default, and the store kept in ``--cache``); the
filters are ``{"month": {"$in": [...]}}`` over ``metadata.month`` with months drawn at
random until the share of matching documents reaches each target. Queries are
``--queries`` held-out catalog texts, encoded before timing. Reported per selectivity:

* ``cold``: the filter evaluated in the database for every query (the match cache
  emptied first): what a filter costs the first time it is used;
* ``cold+index``: the same with ``retrieve index-field month``'s expression index;
* ``warm``: the filter's matches cached for this change-log position (a repeated filter);
* ``after write``: a document written (not yet synced) before every query, so the cached
  matches are brought forward from the change log each time;
* recall@10 against brute force over the matching documents;
* keyword and hybrid p50, unfiltered and at 10% (snippets included).

    HF_HUB_OFFLINE=1 python scripts/bench_filters.py
    HF_HUB_OFFLINE=1 python scripts/bench_filters.py --queries 100 --cache /tmp/bench

Prints a table to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ms(xs: list[float], q: float = 0.5) -> float:
    return round(float(np.quantile(np.asarray(xs), q)) * 1000, 3)


def open_store(folder: Path, **values: Any) -> Any:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    settings = load_settings(overrides={"database_url": f"sqlite:///{folder / 'retrieval.db'}",
                                        "index_dir": str(folder / "index"), "progress": False, **values}, environ={})
    return Retriever.from_settings(settings)


def build(folder: Path) -> Any:
    r = open_store(folder)
    if r.store.count_documents() == 0:
        log(f"building the catalog store in {folder} (embedding 100,000 texts once)")
        t0 = time.perf_counter()
        r.ingest_files([str(CATALOG / "catalog-100k.jsonl")])
        log(f"  built in {time.perf_counter() - t0:.0f}s")
    r.store.index_field("month", drop=True)
    return r


def held_out(n: int) -> list[str]:
    with open(CATALOG / "catalog-100k.jsonl", encoding="utf-8") as fh:
        seen = {json.loads(line)["text"] for line in fh}
    out: list[str] = []
    with open(CATALOG / "catalog.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i < 100_000:
                continue
            t = json.loads(line).get("text", "").strip()
            if t and t not in seen:
                out.append(t)
                seen.add(t)
            if len(out) >= n:
                break
    return out


def month_filters(r: Any, targets: list[float], seed: int) -> list[tuple[float, dict[str, Any], int]]:
    with r.store.connection() as conn:
        counts = dict(conn.exec_driver_sql(
            "SELECT json_extract(metadata, '$.month'), count(*) FROM documents GROUP BY 1").all())
    total = sum(counts.values())
    out = []
    for target in targets:
        months = sorted(m for m in counts if m is not None)
        random.Random(seed).shuffle(months)
        chosen: list[str] = []
        n = 0
        for m in months:
            if n >= target * total:
                break
            if n + counts[m] > target * total * 1.15 and chosen:
                continue  # would overshoot: try a smaller month
            chosen.append(m)
            n += counts[m]
        out.append((target, {"month": {"$in": sorted(chosen)}}, n))
    return out


def timed(fn: Callable[[np.ndarray], Any], qv: np.ndarray, before: Callable[[], None] | None = None) -> list[float]:
    times = []
    for q in qv:
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn(q.reshape(1, -1))
        times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cache", default="~/.cache/retrieval-bench")
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()

    from retrieval.filters import parse
    from retrieval.store.matches import MatchCache

    folder = Path(args.cache).expanduser() / "filters-catalog-100k"
    folder.mkdir(parents=True, exist_ok=True)
    r = build(folder)
    version = r.current_index()
    segments = [f"{s.kind}:{s.rows}" for s in version.manifest.segments]
    texts = held_out(args.queries)
    qv = r.encoder.encode_queries(texts)
    log(f"store: {r.store.count_documents():,} documents, segments {segments}; {len(qv)} queries")
    ids = version.ids
    order = np.argsort(ids)
    ids, vectors = ids[order], version.vectors()[order]

    def search(where: Any) -> Callable[[np.ndarray], Any]:
        return lambda q: r.search_vectors(q, args.k, where=where, version=version)

    for q in qv[:20]:  # warm the page cache and FAISS
        search(None)(q.reshape(1, -1))
    base = timed(search(None), qv)
    rows: list[dict[str, Any]] = []
    serial = [0]

    def write_one() -> None:
        serial[0] += 1
        r.ingest([{"id": f"bench-write-{serial[0]}", "text": "a package written during the benchmark",
                   "metadata": {"month": "2099-01"}}], sync=False, embed_first=True)

    for target, where, n in month_filters(r, [0.01, 0.10, 0.50], args.seed):
        def cold() -> None:
            r.store.matches = MatchCache()

        cold_t = timed(search(where), qv, before=cold)
        warm_t = timed(search(where), qv)
        after_t = timed(search(where), qv[: max(20, len(qv) // 4)], before=write_one)
        r.store.index_field("month")
        indexed_t = timed(search(where), qv, before=cold)
        r.store.index_field("month", drop=True)
        allowed = r.store.count_matching(where)
        parsed = parse(where)
        assert parsed is not None
        with r.store.read() as snap:
            match_ids = snap.matching_ids(parsed)
        mask = np.isin(ids, match_ids)
        sub_ids, sub_vecs = ids[mask], vectors[mask]
        recalls = []
        for q in qv[:100]:
            truth = set(sub_ids[np.argsort(-(sub_vecs @ q), kind="stable")[: args.k]].tolist())
            got = {h.doc_id for h in r.search_vectors(q.reshape(1, -1), args.k, where=where, version=version)[0]}
            recalls.append(len(got & truth) / max(1, len(truth)))
        rows.append({"target": target, "selectivity": round(n / len(ids), 4), "matching": allowed,
                     "months": len(where["month"]["$in"]),
                     "cold_p50_ms": ms(cold_t), "cold_p99_ms": ms(cold_t, 0.99),
                     "cold_indexed_p50_ms": ms(indexed_t), "warm_p50_ms": ms(warm_t), "warm_p99_ms": ms(warm_t, 0.99),
                     "after_write_p50_ms": ms(after_t), "recall_at_10": round(float(np.mean(recalls)), 4)})
        log(f"  {target:.0%}: {rows[-1]}")
    r.delete([f"bench-write-{i}" for i in range(1, serial[0] + 1)])

    # Keyword and hybrid modes on the same store, the query vectors given (no encoding).
    from retrieval.search import pipeline

    modes: dict[str, float] = {}
    for mode in ("keyword", "hybrid"):
        for label, where in (("", None), (" 10%", month_filters(r, [0.10], args.seed)[0][1])):
            parsed_where = parse(where)
            times = []
            for text, q in zip(texts, qv):
                req = pipeline.Request(args.k, vectors=q.reshape(1, -1), texts=[text], mode=mode, where=parsed_where)
                t0 = time.perf_counter()
                pipeline.run(r.store, version, lambda: r.encoder, req, ef_search=r.settings.index.hnsw_ef_search)
                times.append(time.perf_counter() - t0)
            modes[mode + label] = ms(times)
    log(f"  modes: {modes}")
    result = {"machine": machine(), "documents": int(len(ids)), "segments": segments, "queries": len(qv),
              "k": args.k, "unfiltered_p50_ms": ms(base), "unfiltered_p99_ms": ms(base, 0.99), "filtered": rows,
              "modes_p50_ms": modes,
              "command": "HF_HUB_OFFLINE=1 python scripts/bench_filters.py " + " ".join(sys.argv[1:])}
    log(f"\n{result['machine']}\n{len(ids):,} documents, segments {segments}, k={args.k}, "
        f"{len(qv)} queries; unfiltered p50 {result['unfiltered_p50_ms']} ms")
    log(f"{'selectivity':>11} {'cold':>8} {'cold+idx':>9} {'warm':>8} {'after write':>12} {'recall@10':>10}  "
        "(p50 ms; ratio warm/unfiltered)")
    for row in rows:
        log(f"{row['selectivity']:>11.2%} {row['cold_p50_ms']:>8} {row['cold_indexed_p50_ms']:>9} "
            f"{row['warm_p50_ms']:>8} {row['after_write_p50_ms']:>12} {row['recall_at_10']:>10}  "
            f"x{row['warm_p50_ms'] / result['unfiltered_p50_ms']:.2f}")
    log(f"keyword and hybrid p50 (ms, k={args.k}, with snippets): {modes}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
