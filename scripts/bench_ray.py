#!/usr/bin/env python
"""Bulk embedding throughput: the local encoder against Ray actors on the same cores.

``--texts`` catalog descriptions (the first rows of ../shared/data/catalog/catalog.jsonl)
are stored in a fresh SQLite store for every run (not timed), then every one of them
without a vector is embedded by :func:`retrieval.sync.vectors.embed_stored`, the loop of
`retrieve embed`, on one of these pools:

* ``local``: this process's encoder (the default settings: backend/precision auto,
  threads = physical cores), as `retrieve embed` and `retrieve ingest` run it;
* ``ray-1x{C}``: one Ray actor with all C cores as its threads;
* ``ray-2x1`` (and more, on more cores): one actor per core, one thread each, the
  default of ``ray_threads: 1``.

One local Ray cluster (``ray.init(num_cpus=C)``) serves every Ray run; its start and
each pool's actor start (model loads) are timed apart from the rate, which runs from
the first page read to the last commit. The driver's own work is shown: seconds reading
pages and committing vectors, and the CPU seconds this process used per 1,000 texts
(the driver's Ray threads included). Configurations run interleaved, ``--repeats``
times; reported are medians and each one's ratio to ``local``. The target is the
2-actor run at >= 0.85x local: Ray's value is more machines, not more speed on one.

    python scripts/bench_ray.py                       # 20,000 texts, 3 repeats
    python scripts/bench_ray.py --texts 2000 --repeats 1

Prints a table to stderr and one JSON line to stdout; writes the JSON to ``--out``
(bench/ray_embed.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog.jsonl"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import catalog_documents, machine  # noqa: E402
from retrieval.embed import create_encoder  # noqa: E402
from retrieval.embed.cpu import physical_cores  # noqa: E402
from retrieval.embed.spec import EncoderSpec  # noqa: E402
from retrieval.executors import EmbedPool, LocalPool  # noqa: E402
from retrieval.store.records import NewDocument, content_hash  # noqa: E402
from retrieval.store.repository import Store  # noqa: E402
from retrieval.sync.vectors import BulkEmbedReport, embed_stored  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
TARGET = 0.85


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def one_run(name: str, docs: list[NewDocument], make_pool: Any, folder: Path) -> dict[str, Any]:
    store = Store.open(f"sqlite:///{folder / f'{name}-{time.monotonic_ns()}.db'}")
    try:
        store.upsert(docs)
        t0 = time.perf_counter()
        pool: EmbedPool = make_pool()
        startup = time.perf_counter() - t0
        report = BulkEmbedReport(executor=name)
        cpu0 = cpu_seconds()
        with pool:
            embed_stored(store, pool, progress=False, report=report)
        cpu = cpu_seconds() - cpu0
        with store.read() as snap:
            sample = snap.embeddings(pool.model_key, sorted({content_hash(d.text) for d in docs})[:200])
    finally:
        store.close()
    return {"texts_per_second": report.texts_per_second, "seconds": report.seconds, "embedded": report.embedded,
            "startup_seconds": startup, "driver_read_seconds": report.read_seconds,
            "driver_write_seconds": report.write_seconds, "driver_cpu_per_1000": 1000 * cpu / max(report.embedded, 1),
            "workers": report.workers, "backend": [w.get("backend") for w in report.workers_info],
            "sample": sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--texts", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "ray_embed.json")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not CATALOG.is_file():
        raise SystemExit(f"{CATALOG} is missing")
    import ray

    docs = catalog_documents(CATALOG, args.texts)
    cores = physical_cores()
    encoder = create_encoder(MODEL, progress=False)
    encoder.load()
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    cluster_start = time.perf_counter() - t0
    from retrieval.executors.ray_pool import RayPool

    configs: dict[str, Any] = {"local": lambda: LocalPool(encoder)}
    wide = EncoderSpec.pinned(encoder, MODEL, threads=cores)
    narrow = EncoderSpec.pinned(encoder, MODEL, threads=1)
    configs[f"ray-1x{cores}"] = lambda: RayPool(wide, actors=1)
    configs[f"ray-{cores}x1"] = lambda: RayPool(narrow, actors=cores)
    log(f"{machine()}; {len(docs):,} texts; encoder {encoder.backend} {encoder.precision}; "
        f"Ray {ray.__version__} local cluster of {cores} CPUs started in {cluster_start:.1f}s")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for repeat in range(args.repeats):
            for name, make in configs.items():
                run = one_run(name, docs, make, Path(tmp))
                runs[name].append(run)
                log(f"  repeat {repeat + 1} {name:>9}: {run['texts_per_second']:7.1f} texts/s "
                    f"({run['embedded']:,} in {run['seconds']:.1f}s; start-up {run['startup_seconds']:.1f}s)")
    ray.shutdown()
    # The pools give the same vectors (checked on a sample of each run's last repeat).
    ref = runs["local"][-1]["sample"]
    agreement = {name: float(min(np.dot(ref[h], r[-1]["sample"][h]) for h in ref)) for name, r in runs.items()}
    base = statistics.median(r["texts_per_second"] for r in runs["local"])
    results: dict[str, Any] = {}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("texts_per_second", "seconds", "startup_seconds",
                                                                  "driver_read_seconds", "driver_write_seconds",
                                                                  "driver_cpu_per_1000")}
        results[name] = {**{k: round(v, 3) for k, v in med.items()}, "ratio_to_local": round(med["texts_per_second"] / base, 3),
                         "workers": rs[0]["workers"], "backend": rs[0]["backend"],
                         "all_texts_per_second": [round(r["texts_per_second"], 1) for r in rs],
                         "min_cosine_to_local": round(agreement[name], 6)}
    two = results[f"ray-{cores}x1"]["ratio_to_local"]
    out = {"machine": machine(), "texts": len(docs), "distinct_texts": runs["local"][0]["embedded"],
           "repeats": args.repeats, "encoder": f"{encoder.backend} {encoder.precision}", "ray": ray.__version__,
           "cluster_start_seconds": round(cluster_start, 2), "results": results,
           "target": f"ray-{cores}x1 >= {TARGET}x local", "target_met": two >= TARGET,
           "command": "python scripts/bench_ray.py " + " ".join(sys.argv[1:])}
    log(f"\n{'pool':>9} | texts/s | x local | start-up s | driver read s | driver write s | driver CPU s/1k")
    for name, r in results.items():
        log(f"{name:>9} | {r['texts_per_second']:7.1f} | {r['ratio_to_local']:7.2f} | {r['startup_seconds']:10.1f} | "
            f"{r['driver_read_seconds']:13.2f} | {r['driver_write_seconds']:14.2f} | {r['driver_cpu_per_1000']:15.2f}")
    log(f"target ray-{cores}x1 >= {TARGET}x local: {'met' if out['target_met'] else 'NOT met'} ({two:.2f}x)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
