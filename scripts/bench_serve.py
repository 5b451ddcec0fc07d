#!/usr/bin/env python
"""Load benchmark of `retrieve serve`: a bounded load from this (second) process on loopback.

It starts two `retrieve serve` subprocesses on free loopback ports, one with query
micro-batching and one encoding per request, against one store of ``--docs`` catalog
documents, and measures each for a fixed number of seconds per phase:

1. ``single``: one client, one search at a time (latency without contention);
2. ``search``: ``--clients`` concurrent clients searching;
3. ``mixed``: the same clients searching while one writer upserts batches of
   ``--write-batch`` changed documents back to back (each write re-embeds them and
   publishes an index version before it answers).

It reports throughput (searches/s, writes/s) and p50/p99 latency, and the ratio of the
batched server to the per-request one for each phase. Phases alternate between the two
servers for ``--rounds`` rounds and the median round is reported (with the range), so that
the drifting background load of a shared machine hits both alike. Nothing here asserts
on time.

The seeded store is cached under the system temp folder, keyed by the document count,
so that reruns skip embedding (20,000 documents take about a minute). Written documents
are catalog documents with changed texts; their ids stay, so the store size does not grow.
The last line on stdout is one JSON object with every figure.

    HF_HUB_OFFLINE=1 python scripts/bench_serve.py                          # 20,000 documents
    HF_HUB_OFFLINE=1 python scripts/bench_serve.py --docs 2000 --seconds 5 --clients 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
K = 10


def read_catalog(path: Path, n: int, *, strict: bool = True) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) >= n:
                break
    if strict and len(rows) < n:
        raise SystemExit(f"{path} has only {len(rows)} documents, fewer than --docs {n}")
    return rows


def seeded_store(catalog: Path, n: int) -> Path:
    """A store holding the first ``n`` catalog documents, embedded once and cached."""
    folder = Path(tempfile.gettempdir()) / f"retrieval-bench-serve-{n}"
    marker = folder / "seeded.json"
    if marker.is_file() and json.loads(marker.read_text()).get("docs") == n:
        return folder
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    folder.mkdir(parents=True, exist_ok=True)
    settings = load_settings(overrides=_store_settings(folder), environ={}, cwd=folder)
    t0 = time.perf_counter()
    sys.stderr.write(f"seeding {n} documents into {folder} (cached for reruns) ...\n")
    with Retriever.from_settings(settings) as r:
        r.ingest(read_catalog(catalog, n))
    marker.write_text(json.dumps({"docs": n, "seconds": round(time.perf_counter() - t0, 1)}))
    return folder


def _store_settings(folder: Path) -> dict[str, Any]:
    return {"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index"), "progress": False}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, folder: Path, *, batching: bool, key: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"serve-{'batched' if batching else 'per-request'}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
        env.update({f"RETRIEVE_{k.upper()}": str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in _store_settings(folder).items()})
        env["RETRIEVE_API_KEY"] = key
        cmd = [sys.executable, "-m", "retrieval.cli", "serve", "--port", str(self.port), "--log-level", "warning",
               "--query-batching" if batching else "--no-query-batching"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"the server did not become ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(latencies: list[float], errors: int, seconds: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "errors": errors,
        "per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(_pct(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_pct(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else float("nan"),
    }


async def _load(url: str, key: str, queries: list[str], docs: list[dict[str, Any]], *, clients: int, seconds: float,
                max_requests: int, write_batch: int) -> dict[str, Any]:
    """``clients`` searchers (and a writer when ``write_batch``) until the time or count is up."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients + 2, max_keepalive_connections=clients + 2)
    latencies: list[float] = []
    write_latencies: list[float] = []
    errors = {"search": 0, "write": 0}
    issued = 0
    stop_at = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:

        async def searcher(offset: int) -> None:
            nonlocal issued
            i = offset
            while time.perf_counter() < stop_at and issued < max_requests:
                issued += 1
                t0 = time.perf_counter()
                r = await http.post("/v1/search", json={"query": queries[i % len(queries)], "k": K})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors["search"] += 1
                i += clients

        async def writer() -> None:
            n = 0
            while time.perf_counter() < stop_at:
                batch = []
                for j in range(write_batch):
                    d = docs[(n * write_batch + j) % len(docs)]
                    batch.append({"id": d["id"], "text": f"{d['text']} (revision {time.time_ns()})",
                                  "metadata": d.get("metadata") or {}})
                t0 = time.perf_counter()
                r = await http.post("/v1/documents", json={"documents": batch})
                if r.status_code == 200:
                    write_latencies.append(time.perf_counter() - t0)
                else:
                    errors["write"] += 1
                n += 1

        t0 = time.perf_counter()
        tasks = [searcher(c) for c in range(clients)] + ([writer()] if write_batch else [])
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    out = {"search": _summary(latencies, errors["search"], elapsed), "seconds": round(elapsed, 2)}
    if write_batch:
        out["write"] = _summary(write_latencies, errors["write"], elapsed)
        out["write"]["docs_per_s"] = round(len(write_latencies) * write_batch / elapsed, 1)
    return out


PHASES = ("single", "search", "mixed")


def _phase(server: Server, key: str, phase: str, queries: list[str], docs: list[dict[str, Any]],
           args: argparse.Namespace) -> dict[str, Any]:
    clients = 1 if phase == "single" else args.clients
    write_batch = args.write_batch if phase == "mixed" else 0
    return asyncio.run(_load(server.url, key, queries, docs, clients=clients, seconds=args.seconds,
                             max_requests=args.max_requests, write_batch=write_batch))


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median search throughput, with the range over all runs."""
    ordered = sorted(runs, key=lambda r: r["search"]["per_s"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["search_per_s_range"] = [ordered[0]["search"]["per_s"], ordered[-1]["search"]["per_s"]]
    return chosen


def run_all(folder: Path, variants: list[str], queries: list[str], docs: list[dict[str, Any]],
            args: argparse.Namespace) -> dict[str, Any]:
    """Both servers stay up; phases alternate between them round after round, so that
    drifting background load on a shared machine hits both alike."""
    key = secrets.token_urlsafe(24)
    servers: dict[str, Server] = {}
    try:
        for v in variants:
            servers[v] = Server(folder, batching=v == "batched", key=key)
        for server in servers.values():  # warm-up
            asyncio.run(_load(server.url, key, queries, docs, clients=args.clients, seconds=2,
                              max_requests=args.max_requests, write_batch=0))
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {v: {p: [] for p in PHASES} for v in variants}
        for r in range(args.rounds):
            for phase in PHASES:
                for v in variants if r % 2 == 0 else list(reversed(variants)):
                    sys.stderr.write(f"round {r + 1}/{args.rounds}: {v} {phase}\n")
                    runs[v][phase].append(_phase(servers[v], key, phase, queries, docs, args))
    finally:
        for server in servers.values():
            server.stop()
    return {v: {p: _median_run(runs[v][p]) for p in PHASES} for v in variants}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000, help="Catalog documents in the store (default 20000).")
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each measured phase.")
    parser.add_argument("--max-requests", type=int, default=100_000, help="Stop a phase after this many searches.")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent searching clients.")
    parser.add_argument("--write-batch", type=int, default=10, help="Documents per upsert in the mixed phase.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every phase on every variant (medians reported).")
    parser.add_argument("--variants", default="batched,per-request",
                        help="Comma-separated server variants: batched, per-request.")
    args = parser.parse_args()

    folder = seeded_store(args.catalog, args.docs)
    docs = read_catalog(args.catalog, args.docs)
    # Queries: catalog texts that are not in the store (else the first ones), cut to a search-like length.
    extra = read_catalog(args.catalog, args.docs + 2000, strict=False)[args.docs :] or docs[:2000]
    queries = [" ".join(r["text"].split()[:12]) for r in extra]

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for variant in variants:
        if variant not in ("batched", "per-request"):
            raise SystemExit(f"unknown variant {variant!r}: use batched and/or per-request")
    results: dict[str, Any] = run_all(folder, variants, queries, docs, args)

    sys.stderr.write(f"\n{args.docs} documents, {args.clients} clients, {args.seconds:.0f} s per phase, "
                     f"median of {args.rounds} interleaved rounds, "
                     f"writes of {args.write_batch} documents, {os.cpu_count()} CPUs\n")
    sys.stderr.write(f"{'variant':<12} {'phase':<7} {'searches/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
                     f" {'writes/s':>9} {'write p50':>9} {'write p99':>9}\n")
    for variant, phases in results.items():
        for phase, m in phases.items():
            lo, hi = m["search_per_s_range"]
            s = m["search"]
            w = m.get("write")
            tail = f" {w['per_s']:>9} {w['p50_ms']:>9} {w['p99_ms']:>9}" if w else ""
            sys.stderr.write(f"{variant:<12} {phase:<7} {s['per_s']:>10} {s['p50_ms']:>8} {s['p99_ms']:>8} "
                             f"{s['errors'] + (w['errors'] if w else 0):>6}{tail}   (searches/s {lo}-{hi})\n")
    if {"batched", "per-request"} <= set(results):
        ratios = {phase: round(results["batched"][phase]["search"]["per_s"] / results["per-request"][phase]["search"]["per_s"], 2)
                  for phase in ("single", "search", "mixed") if results["per-request"][phase]["search"]["per_s"]}
        results["throughput_ratio_batched_over_per_request"] = ratios
        sys.stderr.write(f"throughput batched / per-request: {ratios}\n")
    results["config"] = {"docs": args.docs, "clients": args.clients, "seconds": args.seconds, "rounds": args.rounds,
                         "write_batch": args.write_batch, "k": K, "cpus": os.cpu_count()}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
