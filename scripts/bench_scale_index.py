#!/usr/bin/env python
"""The index at scale, on the index layer alone (no database): compressed segments on real
vectors, and storage and memory as a store grows. A companion of ``bench_scale.py``, whose
figures go through the database and the model.

**Search** (``--search``): the whole catalog (784,692 texts, embedded once per machine with
the real model by ``scripts/embed_catalog.py`` and cached outside the repository), less
2,000 held-out texts as queries and 1,000 more as the store's "recent real queries" for
the recall guard. The rows are written as flat segments of ``--batch`` rows, then merged
by ``Retriever.merge(fewest=True)``'s plan (``retrieve compact --fewest``) into what
``index.type: auto`` builds at that size (an HNSW graph over 8-bit codes, every candidate
re-scored exactly), in a child process whose peak RSS over its RSS before the merge is
reported against ``index.merge_memory_mb``. Another child opens the index as a server
would and reports warm search p50/p99 (one thread, no query encoding, k 10), recall@10
against exact, and its RSS against the float32 vector bytes. In this process, in the
same run: a monolithic FAISS HNSW (M 32, efConstruction 100) over the same vectors at
every efSearch of the guard's grid, a monolithic IVF over 8-bit codes at every nprobe,
and a flat index.

**Storage** (``--storage``): ``--rows`` rows against ``--small`` rows in the same run,
vectors made from the real ones (row i is catalog vector i mod 784,692 plus Gaussian noise
of standard deviation 0.01 a dimension, re-normalised: a simulation of a larger corpus,
not real texts), and 1,000 more such rows as the store's recorded queries. Rows arrive
in batches of ``--batch``, each a segment; after each, the merges the tiered policy asks
for run (in process, as the worker runs them). Reported:
segments over time, write amplification (bytes written / the final generation's bytes),
each merge's peak RSS over the RSS before it (sampled every 20 ms), one-row add, update
and delete index work (what a sync does: a one-row segment, a tombstone file, a
manifest; median of ``--repeats``) with bytes written, a cold open and search in a new
process, and serving RSS in a new process after 200 searches.

    HF_HUB_OFFLINE=1 python scripts/bench_scale_index.py --search
    python scripts/bench_scale_index.py --storage --rows 1000000 --small 100000

Prints a table to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine, med, pct, recall_at, timed  # noqa: E402

K = 10


def log(msg: str) -> None:
    print(f"[scale-index] {msg}", file=sys.stderr, flush=True)


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """The highest RSS of this process while the block runs, sampled every 20 ms."""

    def __init__(self) -> None:
        self.before = self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = rss()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def over(self) -> int:
        return self.peak - self.before


def nullcontext() -> Any:
    return contextlib.nullcontext()


# -- writing an index without a database ----------------------------------------------


def new_index(root: Path, dim: int) -> Any:
    from retrieval.index.manifest import Manifest
    from retrieval.index.store import IndexStore

    shutil.rmtree(root, ignore_errors=True)
    store = IndexStore(root)
    store.commit(Manifest(generation=store.next_generation(), model_key=f"bench|{dim}", dim=dim, index_type="auto",
                          last_seq=0, segments=(), created_at=time.time(), lineage="bench"))
    return store


def add_segment(store: Any, ids: np.ndarray, vectors: np.ndarray, opts: Any, calibration: Any = None) -> Any:
    version = store.load()
    generation = store.next_generation()
    meta = store.write_segment(ids, vectors, opts=opts, origin="sync", generation=generation, calibration=calibration)
    return store.commit(version.manifest.successor(generation, segments=(*version.manifest.segments, meta)))


def merge_all(store: Any, opts: Any, *, fewest: bool = False, calibration: Any = None) -> list[dict[str, Any]]:
    """Run the merges the policy asks for (or towards the fewest segments), each with its
    peak RSS over the RSS before it."""
    from retrieval.index.policy import MergePolicy
    from retrieval.sync.merge import merge

    policy = MergePolicy()
    out = []
    while True:
        manifest = store.load().manifest
        plans = (policy.plan_fewest if fewest else policy.plan)(manifest.segments, opts, manifest.dim)
        if not plans:
            return out
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            report = merge(store, plans[0], opts, nullcontext, calibration=(lambda: calibration) if calibration else None)
        out.append({"reason": report.reason, "inputs": report.inputs, "rows": report.live, "kind": report.kind,
                    "seconds": round(time.perf_counter() - t0, 1), "peak_rss_over_mb": round(peak.over / 2**20, 1),
                    "ef_search": report.ef_search, "nprobe": report.nprobe, "rescore": report.rescore,
                    "recall": report.recall, "calibration": report.calibration})
        log(f"  merged {plans[0].describe()} -> {report.kind} in {out[-1]['seconds']}s, "
            f"peak RSS +{out[-1]['peak_rss_over_mb']} MB ({report.calibration})")


# -- children ---------------------------------------------------------------------------


def child_merge(folder: Path, budget_mb: int, calibration_file: str, compressed_min_docs: int) -> dict[str, Any]:
    from retrieval.config import IndexSettings
    from retrieval.index.build import BuildOptions, Calibration
    from retrieval.index.store import IndexStore

    store = IndexStore(folder)
    store.load()
    # The guard starts where a store's does (index.hnsw_ef_search), not at the dataclass's default.
    opts = BuildOptions(merge_memory_mb=budget_mb, threads=2, compressed_min_docs=compressed_min_docs,
                        ef_search=IndexSettings().hnsw_ef_search)
    calibration = Calibration(np.load(calibration_file), "queries")
    serving = rss()
    merges = merge_all(store, opts, fewest=True, calibration=calibration)
    return {"serving_rss_mb_before": round(serving / 2**20, 1), "merges": merges}


def child_serve(folder: Path, queries_file: str, kth_file: str, n: int) -> dict[str, Any]:
    from retrieval.index.segment import set_search_threads
    from retrieval.index.store import IndexStore

    set_search_threads(1)
    t0 = time.perf_counter()
    version = IndexStore(folder).load()
    qv = np.load(queries_file)[:n]
    version.search(qv[:1], K)
    cold = time.perf_counter() - t0
    kth = np.load(kth_file)[:n] if kth_file else None
    for i in range(min(50, len(qv))):
        version.search(qv[i:i + 1], K)
    times, found = [], []
    for i in range(len(qv)):
        t = time.perf_counter()
        scores, _ = version.search(qv[i:i + 1], K)
        times.append(time.perf_counter() - t)
        found.append(scores)
    out: dict[str, Any] = {"cold_open_and_search_s": round(cold, 3), "p50_ms": round(med(times) * 1000, 3),
                           "p99_ms": round(float(np.percentile(times, 99)) * 1000, 3), "rss_bytes": rss(),
                           "rows": int(version.count), "segments": [
                               {"kind": v.meta.kind, "rows": v.meta.rows, "ef_search": v.meta.ef_search,
                                "nprobe": v.meta.nprobe, "rescore": v.meta.rescore, "recall": v.meta.recall,
                                "calibration": v.meta.calibration} for v in version.views]}
    if kth is not None:
        f = np.concatenate(found)
        out["recall@10"] = round(float((f >= kth[:, None] - 1e-5).sum() / f.size), 4)
    return out


def run_child(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- search on the real catalog ---------------------------------------------------------


def timed_search(fn: Any, qv: np.ndarray, kth: np.ndarray) -> dict[str, Any]:
    """p50, p99 and recall@10 of ``fn`` (a query row -> its top scores), one query at a time."""
    times, found = timed(fn, qv)
    return {"p50_ms": round(med(times) * 1000, 3), "p99_ms": round(pct(times, 99) * 1000, 3),
            "recall@10": round(recall_at(np.concatenate(found), kth), 4)}


def search(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss
    from embed_catalog import embed_catalog

    from retrieval.index.build import BuildOptions
    from retrieval.index.compressed import breadths

    path, _ = embed_catalog(args.cache)
    vectors = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(26)
    order = rng.permutation(len(vectors))
    held = order[:3000]
    docs_rows = np.sort(order[3000:3000 + args.search_docs] if args.search_docs else order[3000:])
    qv = np.ascontiguousarray(vectors[held[:2000]], dtype=np.float32)
    calibration = np.ascontiguousarray(vectors[held[2000:]], dtype=np.float32)
    docs = np.ascontiguousarray(vectors[docs_rows], dtype=np.float32)
    n, dim = docs.shape
    log(f"search: {n:,} catalog vectors, {len(qv):,} held-out queries, {len(calibration):,} calibration queries")
    faiss.omp_set_num_threads(2)
    exact = faiss.IndexFlatIP(dim)
    exact.add(docs)
    kth = exact.search(qv, K)[0][:, K - 1]
    np.save(work / "queries.npy", qv)
    np.save(work / "kth.npy", kth)
    np.save(work / "calibration.npy", calibration)
    folder = work / "catalog-index"
    store = new_index(folder, dim)
    opts = BuildOptions(index_type="flat")
    t0 = time.perf_counter()
    for s in range(0, n, args.batch):
        add_segment(store, docs_rows[s:s + args.batch], docs[s:s + args.batch], opts)
    log(f"  {len(store.load().views)} flat segments written in {time.perf_counter() - t0:.0f}s; merging (child)")
    t0 = time.perf_counter()
    merged = run_child("--child-merge", str(folder), str(args.budget_mb), str(work / "calibration.npy"),
                       str(args.compressed_min_docs))
    merged["seconds"] = round(time.perf_counter() - t0, 1)
    served = run_child("--child-serve", str(folder), str(work / "queries.npy"), str(work / "kth.npy"), str(len(qv)))
    served["rss_over_float_vectors"] = round(served["rss_bytes"] / (n * dim * 4), 3)
    out: dict[str, Any] = {"documents": n, "queries": len(qv), "budget_mb": args.budget_mb,
                           "compressed_min_docs": args.compressed_min_docs, "merge": merged,
                           "auto": served}
    faiss.omp_set_num_threads(1)
    # Monolithic baselines over the same vectors, in this run.
    log("  monolithic HNSW (M 32, efConstruction 100)")
    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    mono = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    mono.hnsw.efConstruction = 100
    mono.add(docs)
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    curve = {}
    for ef in breadths(mono, "hnsw", 16, 4096):
        params = faiss.SearchParametersHNSW(efSearch=ef)
        curve[ef] = timed_search(lambda q, p=params: mono.search(q, K, params=p)[0], qv, kth)
        log(f"    efSearch {ef}: {curve[ef]}")
        if curve[ef]["recall@10"] >= max(0.985, served["recall@10"] + 0.003):
            break
    out["monolithic_hnsw"] = {"build_seconds": round(build, 1), "curve": curve}
    reach = [ef for ef, c in curve.items() if c["recall@10"] >= 0.98]
    out["monolithic_hnsw_at_0.98"] = {"ef_search": reach[0], **curve[reach[0]]} if reach else None
    equal = [ef for ef, c in curve.items() if c["recall@10"] >= served["recall@10"]]
    out["monolithic_hnsw_at_equal_recall"] = {"ef_search": equal[0], **curve[equal[0]]} if equal else None
    log("  monolithic IVF over 8-bit codes")
    faiss.omp_set_num_threads(2)
    from retrieval.index.compressed import lists_for

    nlist = lists_for(n)
    ivf = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(dim), dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    ivf.train(docs[rng.choice(n, min(n, 64 * nlist), replace=False)])
    ivf.add(docs)
    faiss.omp_set_num_threads(1)
    icurve = {}
    for nprobe in (16, 64, 256, 512):
        params = faiss.SearchParametersIVF(nprobe=nprobe)

        def ivf_rescored(q: np.ndarray, p: Any = params) -> np.ndarray:
            _, rows = ivf.search(q, 40, params=p)
            r = rows[0][rows[0] >= 0]
            return np.sort(docs[r] @ q[0])[::-1][None, :K]

        icurve[nprobe] = timed_search(ivf_rescored, qv[:500], kth[:500])
        log(f"    nprobe {nprobe}/{nlist} (40 re-scored): {icurve[nprobe]}")
    out["monolithic_ivf_sq8"] = {"nlist": nlist, "rescored": 40, "queries": 500, "curve": icurve}
    out["flat"] = timed_search(lambda q: exact.search(q, K)[0], qv[:500], kth[:500])
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


# -- storage and memory as the store grows ----------------------------------------------


def simulated(base: np.ndarray, start: int, n: int, sigma: float = 0.01) -> np.ndarray:
    """Rows start..start+n: catalog vector (i mod len) plus noise, re-normalised."""
    rows = np.arange(start, start + n) % len(base)
    rng = np.random.default_rng(start)
    x = np.asarray(base[rows], dtype=np.float32) + rng.standard_normal((n, base.shape[1]), dtype=np.float32) * sigma
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def one_row(store: Any, opts: Any, new_id: int, old_id: int | None) -> tuple[float, int]:
    """A sync's index work for one document: a one-row segment, a tombstone for its old
    row (``old_id``), a manifest. Returns (seconds, bytes written)."""
    version = store.load()
    written = store.bytes_written
    t0 = time.perf_counter()
    generation = store.next_generation()
    segments = []
    for v in version.views:
        meta = v.meta
        if old_id is not None:
            rows = v.segment.rows_of(np.array([old_id]))
            rows = rows[~v.dead[rows]]
            if len(rows):
                dead = v.dead.copy()
                dead[rows] = True
                meta = store.with_dead(meta, dead, generation)
        segments.append(meta)
    if new_id >= 0:
        x = simulated(BASE, new_id, 1)
        segments.append(store.write_segment(np.array([new_id]), x, opts=opts, origin="sync", generation=generation))
    store.commit(version.manifest.successor(generation, segments=tuple(segments)))
    return time.perf_counter() - t0, store.bytes_written - written


BASE: np.ndarray = np.empty((0, 384), np.float32)


def storage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    global BASE
    from embed_catalog import embed_catalog

    from retrieval.config import IndexSettings
    from retrieval.index.build import BuildOptions, Calibration

    path, _ = embed_catalog(args.cache)
    BASE = np.load(path, mmap_mode="r")
    opts = BuildOptions(merge_memory_mb=args.budget_mb, threads=2, ef_search=IndexSettings().hnsw_ef_search)
    # The store's recorded queries: 1,000 more simulated rows, far from the stored ones.
    calibration = Calibration(simulated(BASE, 10**9 + 7, 1000), "queries")
    result: dict[str, Any] = {"vectors": "catalog vectors + N(0, 0.01^2) noise a dimension, re-normalised (simulated)",
                              "budget_mb": args.budget_mb, "batch": args.batch}
    for label, rows in (("small", args.small), ("large", args.rows)):
        folder = work / f"index-{label}"
        store = new_index(folder, 384)
        log(f"storage: {rows:,} rows in batches of {args.batch:,}")
        timeline, merges = [], []
        t0 = time.perf_counter()
        for s in range(0, rows, args.batch):
            n = min(args.batch, rows - s)
            add_segment(store, np.arange(s, s + n), simulated(BASE, s, n), opts, calibration)
            merges += merge_all(store, opts, calibration=calibration)
            timeline.append({"rows": s + n, "segments": len(store.load().views)})
        final = store.load()
        final_bytes = sum(f.bytes for f in final.manifest.files())
        figures: dict[str, Any] = {
            "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
            "segments_over_time": timeline[:: max(1, len(timeline) // 20)] + timeline[-1:],
            "final_segments": [{"kind": v.meta.kind, "rows": v.meta.rows} for v in final.views],
            "write_amplification": round(store.bytes_written / final_bytes, 2), "merges": merges,
            "largest_merge_peak_rss_over_mb": max((m["peak_rss_over_mb"] for m in merges), default=0.0),
        }
        adds, updates, deletes = [], [], []
        for r in range(args.repeats):
            adds.append(one_row(store, opts, rows + 10 + r, None))
            updates.append(one_row(store, opts, rows + 100 + r, 7 * r + 3))
            deletes.append(one_row(store, opts, -1, 11 * r + 5))
        figures["one_row"] = {name: {"index_ms": round(med([t for t, _ in xs]) * 1000, 2),
                                     "bytes": int(med([b for _, b in xs]))}
                              for name, xs in (("add", adds), ("update", updates), ("delete", deletes))}
        qfile = work / "storage-queries.npy"
        np.save(qfile, simulated(BASE, 10**9, 200))
        served = run_child("--child-serve", str(folder), str(qfile), "", "200")
        served["rss_over_float_vectors"] = round(served["rss_bytes"] / (rows * 384 * 4), 3)
        figures["serve"] = served
        result[label] = figures
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    s, g = result["small"], result["large"]
    result["ratios_large_over_small"] = {
        f"{k}_index": round(g["one_row"][k]["index_ms"] / max(s["one_row"][k]["index_ms"], 1e-6), 2)
        for k in ("add", "update", "delete")}
    result["ratios_large_over_small"]["cold_open_and_search"] = round(
        g["serve"]["cold_open_and_search_s"] / max(s["serve"]["cold_open_and_search_s"], 1e-6), 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", action="store_true")
    parser.add_argument("--storage", action="store_true")
    parser.add_argument("--search-docs", type=int, default=0, help="search: only this many documents (0: all)")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--budget-mb", type=int, default=1024)
    parser.add_argument("--cache", default="~/.cache/retrieval-bench")
    parser.add_argument("--work", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--compressed-min-docs", type=int, default=20_000,
                        help="search: index.compressed_min_docs of the merged index")
    parser.add_argument("--child-merge", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--child-serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_merge:
        f, budget, calibration, compressed_min = args.child_merge
        print(json.dumps(child_merge(Path(f), int(budget), calibration, int(compressed_min))))
        return 0
    if args.child_serve:
        f, q, kth, n = args.child_serve
        print(json.dumps(child_serve(Path(f), q, kth, int(n))))
        return 0
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-index-", dir=str(REPO.parent)))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    try:
        if args.search:
            result["search"] = search(args, work)
        if args.storage:
            result["storage"] = storage(args, work)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1), file=sys.stderr)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
