#!/usr/bin/env python
"""What grouping passages into documents costs a search (issue 24's cost target).

Two indexes over the same ``--docs`` x ``--passages`` vectors, built in the same run:

* **long**: ``--docs`` documents of ``--passages`` passages each (row ids name document
  and ordinal, :mod:`retrieval.index.rows`); a search ranks documents by their best
  passage (``IndexVersion.search_documents``, widening the row search until it has k
  distinct documents);
* **short**: as many one-passage documents as there are passages.

A document's passages are near each other (its centre plus noise), and each query is a
noisy copy of a random passage, so a query's top rows are often one document's
passages: the case that makes the long index widen its search. Reported: warm search
p50 and p99 (ms, one query at a time, one thread, medians over ``--repeats`` rounds of
``--queries`` queries) of each, and long/short. No database: the database part of a
search (reading the k hits) does not depend on how many passages a document has.

    python scripts/bench_long_search.py                                 # 100,000 x 8, flat
    python scripts/bench_long_search.py --docs 20000 --index-type auto  # HNSW segments

Prints a table to stderr and one JSON line to stdout (``--out`` writes it too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchlib import machine
from retrieval.index.build import BuildOptions
from retrieval.index.manifest import Manifest
from retrieval.index.rows import PASSAGE_BITS, row_ids
from retrieval.index.segment import IndexVersion, set_search_threads
from retrieval.index.store import IndexStore


def unit(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def build(folder: Path, ids: np.ndarray, vectors: np.ndarray, opts: BuildOptions) -> tuple[IndexVersion, float]:
    store = IndexStore(folder)
    t0 = time.perf_counter()
    meta = store.write_segment(ids, vectors, opts=opts, origin="build", generation=1)
    seconds = time.perf_counter() - t0
    version = store.commit(Manifest(generation=1, model_key="bench", dim=vectors.shape[1], index_type=opts.index_type,
                                    last_seq=0, segments=(meta,), created_at=time.time(), passage_bits=PASSAGE_BITS))
    return version, seconds


def latencies(version: IndexVersion, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty(len(queries))
    none = np.empty(0, np.int64)
    for i, q in enumerate(queries):
        t0 = time.perf_counter()
        version.search_documents(q[None, :], k, exclude=none)
        out[i] = time.perf_counter() - t0
    return out * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--index-type", default="flat", choices=["flat", "hnsw", "auto"])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    rng = np.random.default_rng(24)
    rows = args.docs * args.passages
    centres = unit(rng.standard_normal((args.docs, args.dim), dtype=np.float32))
    vectors = np.repeat(centres, args.passages, axis=0)
    vectors += 0.8 / np.sqrt(args.dim) * rng.standard_normal(vectors.shape, dtype=np.float32)
    vectors = unit(vectors)
    picks = rng.choice(rows, size=args.queries, replace=False)
    queries = vectors[picks] + 0.8 / np.sqrt(args.dim) * rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries = unit(queries)

    docs = np.arange(1, args.docs + 1, dtype=np.int64)
    long_ids = row_ids(np.repeat(docs, args.passages), np.tile(np.arange(args.passages, dtype=np.int64), args.docs),
                       PASSAGE_BITS)
    short_ids = row_ids(np.arange(1, rows + 1, dtype=np.int64), np.zeros(rows, np.int64), PASSAGE_BITS)
    opts = BuildOptions(index_type=args.index_type)
    set_search_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        long_version, long_build = build(Path(tmp) / "long", long_ids, vectors, opts)
        short_version, short_build = build(Path(tmp) / "short", short_ids, vectors, opts)
        rounds: dict[str, list[tuple[float, float]]] = {"long": [], "short": []}
        for _ in range(args.repeats):  # interleaved, so that drift hits both alike
            for name, version in (("short", short_version), ("long", long_version)):
                ms = latencies(version, queries, args.k)
                rounds[name].append((float(np.percentile(ms, 50)), float(np.percentile(ms, 99))))
        kinds = {name: v.manifest.segments[0].kind for name, v in (("long", long_version), ("short", short_version))}
    result: dict[str, object] = {"cpu": machine(), "docs": args.docs, "passages_per_doc": args.passages,
                                 "rows": rows, "dim": args.dim, "k": args.k, "queries": args.queries,
                                 "repeats": args.repeats, "index_type": args.index_type, "segment_kinds": kinds,
                                 "build_seconds": {"long": round(long_build, 1), "short": round(short_build, 1)}}
    for name in ("long", "short"):
        result[f"{name}_p50_ms"] = round(float(np.median([r[0] for r in rounds[name]])), 3)
        result[f"{name}_p99_ms"] = round(float(np.median([r[1] for r in rounds[name]])), 3)
    result["long_over_short_p50"] = round(float(result["long_p50_ms"]) / float(result["short_p50_ms"]), 3)  # type: ignore[arg-type]
    print(f"{args.docs:,} documents x {args.passages} passages = {rows:,} rows ({kinds['long']}), k={args.k}, "
          f"{result['cpu']}", file=sys.stderr)
    for name in ("short", "long"):
        print(f"  {name:<5} p50 {result[f'{name}_p50_ms']:8.3f} ms  p99 {result[f'{name}_p99_ms']:8.3f} ms",
              file=sys.stderr)
    print(f"  long / short p50: {result['long_over_short_p50']:.2f}x", file=sys.stderr)
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
