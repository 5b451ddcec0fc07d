#!/usr/bin/env python
"""The segmented index at scale: what a change costs, how fast readers follow, and search
on real vectors against a monolithic HNSW and a flat index.

Storage figures (``--docs``, default 1,000,000, and ``--small``, default 10,000, in the
same run so that ratios hold on any CPU). A batch job ingests catalog texts
(``../shared/data/catalog/catalog.jsonl``, 784,692 rows, plus "(variant n)" copies to reach
the size) in batches of ``--batch`` with ``Retriever.ingest``, running the merges the
policy asks for after each batch as the worker would. Embedding a million texts on two
cores takes hours, so this part uses the deterministic ``hash-384`` test encoder and
``index_type: flat`` (the recall guard keeps hash-384 segments exact anyway: see the
README). Reported:

* segment count after every batch, and write amplification (bytes written under
  ``index_dir`` / the final generation's bytes);
* one-document add, update and delete: the wall time of a ``retrieve ingest`` /
  ``retrieve delete`` process, and the in-process call in both publish modes of the same
  run: ``background`` (the default: the call returns once its transaction commits;
  ``in_process_s``, and ``publish_after_s``, the background publish that follows) and
  ``wait`` (``wait=True``: the call publishes before returning; ``in_process_wait_s`` and
  its index stage), and bytes written under ``index_dir`` (median of ``--repeats``). The
  publisher is flushed, untimed, before each timed call: every call is measured alone;
* how long a long-lived reader takes to open a new generation (median of 10);
* cold ``retrieve search`` (a fresh process; median of 5);
* RSS of ``retrieve serve`` after 200 searches, against the float32 vector bytes.

Search figures (``--search-docs`` real all-MiniLM-L6-v2 vectors of catalog texts, embedded
once and cached in ``--cache``, and ``--queries`` held-out catalog texts as queries): warm
search p50/p99 without query encoding and recall@10 against exact, for ``auto`` after
merges settled (the index alone and the whole pipeline with its database snapshot), a
monolithic FAISS HNSW with the same M and efSearch built over the same vectors in the
same run, and a flat index.

    HF_HUB_OFFLINE=1 python scripts/bench_scale.py                    # everything (about an hour)
    HF_HUB_OFFLINE=1 python scripts/bench_scale.py --docs 100000 --search-docs 20000   # quicker
    HF_HUB_OFFLINE=1 python scripts/bench_scale.py --skip-search --peers

Prints a table to stderr and one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine, med, pct, recall_at, timed  # noqa: E402


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


# -- texts --------------------------------------------------------------------------


def catalog_texts(path: Path) -> list[str]:
    out: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            text = (json.loads(line).get("text") or "").strip()
            out.append(text or "an empty description")
    return out


def docs_for(base: list[str], start: int, n: int) -> list[dict[str, str]]:
    docs = []
    for i in range(start, start + n):
        text = base[i % len(base)]
        if i >= len(base):
            text = f"{text} (variant {i // len(base)})"
        docs.append({"id": f"c{i}", "text": text})
    return docs


# -- storage ------------------------------------------------------------------------


def env_for(folder: Path, model: str = "hash-384", index_type: str = "flat") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update({"RETRIEVE_DATABASE_URL": f"sqlite:///{folder / 'retrieval.db'}", "RETRIEVE_INDEX_DIR": str(folder / "index"),
                "RETRIEVE_MODEL": model, "RETRIEVE_INDEX_TYPE": index_type, "RETRIEVE_PROGRESS": "false",
                "HF_HUB_OFFLINE": "1"})
    return env


def files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def new_bytes(root: Path, before: dict[str, int]) -> int:
    after = files(root)
    return sum(s for p, s in after.items() if p not in before or p in ("CURRENT", "worker.json"))


def open_store(folder: Path) -> Any:
    from retrieval.retriever import Retriever

    return Retriever.open(folder, model="hash-384", index_type="flat", progress=False)


def batched_ingest(folder: Path, base: list[str], n: int, batch: int) -> tuple[Any, dict[str, Any]]:
    shutil.rmtree(folder, ignore_errors=True)
    r = open_store(folder)
    counts: list[int] = []
    merges = 0
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        r.ingest(docs_for(base, start, min(batch, n - start)), wait=True)
        counts.append(len(r.index_store.read_manifest().segments))
        merges += len(r.merge())  # what the worker does in the background
        done = start + batch
        if done % (batch * 20) == 0 or done >= n:
            log(f"  {min(done, n):,} documents, {counts[-1]} segments before merges, "
                f"{time.perf_counter() - t0:.0f}s")
    manifest = r.index_store.read_manifest()
    final = sum(f.bytes for f in manifest.files())
    return r, {"documents": n, "batch": batch, "ingest_seconds": round(time.perf_counter() - t0, 1),
               "segments_after_each_batch": counts, "max_segments": max(counts), "final_segments": len(manifest.segments),
               "merges": merges, "bytes_written": r.index_store.bytes_written, "final_index_bytes": final,
               "write_amplification": round(r.index_store.bytes_written / final, 2)}


def one_document(folder: Path, r: Any, repeats: int, serial: list[int]) -> dict[str, Any]:
    root = Path(r.settings.store.index_dir)
    env = env_for(folder)
    out: dict[str, dict[str, list[float]]] = {}

    def note(kind: str, key: str, value: float) -> None:
        out.setdefault(kind, {}).setdefault(key, []).append(value)

    for _ in range(repeats):
        serial[0] += 1
        s = serial[0]
        # In process, in both publish modes: background (the default) and wait.
        for mode, wait, base in (("", None, 0), ("_wait", True, 4)):
            actions: list[tuple[str, Callable[[], Any]]] = [
                ("add", lambda s=s, w=wait, m=mode: r.ingest(
                    [{"id": f"bench-new{m}-{s}", "text": f"a brand new package number {s}{m}"}], wait=w)),
                ("update", lambda s=s, w=wait, b=base: r.ingest(
                    [{"id": f"c{s * 101 + b}", "text": f"an updated package description {s}"}], wait=w)),
                ("delete", lambda s=s, w=wait, b=base: r.delete([f"c{s * 101 + b + 1}"], wait=w)),
            ]
            for kind, run in actions:
                r.flush()  # the publisher is idle: each call is measured alone
                written = r.index_store.bytes_written
                t0 = time.perf_counter()
                result = run()
                note(kind, f"in_process{mode}_s", time.perf_counter() - t0)
                if not mode:
                    t0 = time.perf_counter()
                    r.flush()  # the background publish (its 20 ms wait cut short)
                    note(kind, "publish_after_s", time.perf_counter() - t0)
                note(kind, f"in_process{mode}_bytes", r.index_store.bytes_written - written)
                sync = getattr(result, "sync", None)
                if sync is not None:
                    note(kind, "index_stage_s", sync.stages.get("index", 0.0))
        # As a process.
        one = folder / "one.jsonl"
        for kind, args in (
            ("add", ["ingest", str(one)]),
            ("update", ["ingest", str(one)]),
            ("delete", ["delete", f"c{s * 101 + 3}"]),
        ):
            if kind == "add":
                one.write_text(json.dumps({"id": f"bench-proc-{s}", "text": f"another new package {s}"}) + "\n")
            elif kind == "update":
                one.write_text(json.dumps({"id": f"c{s * 101 + 2}", "text": f"a rewritten package {s}"}) + "\n")
            before = files(root)
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "retrieval", *args], env=env, cwd=folder, capture_output=True, text=True)
            note(kind, "process_s", time.perf_counter() - t0)
            if proc.returncode != 0:
                raise SystemExit(f"retrieve {' '.join(args)} failed: {proc.stderr[-500:]}")
            note(kind, "process_bytes", new_bytes(root, before))
    return {kind: {k: round(med(v), 4) for k, v in figures.items()} for kind, figures in out.items()}


def reader_follow(folder: Path, r: Any) -> dict[str, Any]:
    reader = open_store(folder)
    reader.current_index()
    times, opened = [], []
    for i in range(10):
        r.ingest([{"id": f"bench-follow-{i}", "text": f"a package the reader must see {i}"}], wait=True)  # a generation
        cached = set(reader.index_store._open)
        t0 = time.perf_counter()
        version = reader.current_index()
        times.append(time.perf_counter() - t0)
        opened.append(len(set(reader.index_store._open) - cached))
        assert version.manifest.filename == r.index_store.current_name()
    reader.close()
    return {"open_new_generation_ms": round(med(times) * 1000, 3), "max_ms": round(max(times) * 1000, 3),
            "segments_opened_per_generation": max(opened)}


def cold_search(folder: Path, runs: int = 5, env: dict[str, str] | None = None) -> float:
    env = env or env_for(folder)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "retrieval", "search", f"web framework {i}", "-k", "10"],
                              env=env, cwd=folder, capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"cold search failed: {proc.stderr[-500:]}")
    return round(med(times), 3)


def serving_rss(folder: Path, documents: int, port: int = 18765) -> dict[str, Any]:
    env = env_for(folder)
    proc = subprocess.Popen([sys.executable, "-m", "retrieval", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            raise SystemExit("retrieve serve did not become ready")
        for i in range(200):
            body = json.dumps({"query": f"package for {i} things", "k": 10}).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/search", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as resp:
                resp.read()
        status = {}
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                status[key] = int(value.split()[0]) * 1024
        vector_bytes = documents * 384 * 4
        return {"rss_bytes": status.get("VmRSS"), "rss_anon_bytes": status.get("RssAnon"),
                "rss_file_bytes": status.get("RssFile"), "float32_vector_bytes": vector_bytes,
                "rss_over_vectors": round(status.get("VmRSS", 0) / vector_bytes, 3)}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def peers(n: int, repeats: int, work: Path) -> dict[str, Any]:
    """Chroma and LanceDB, same job: n planted 384-d vectors, then one-document upserts."""
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, 384)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out: dict[str, Any] = {}
    try:
        import chromadb

        path = work / "chroma"
        shutil.rmtree(path, ignore_errors=True)
        client = chromadb.PersistentClient(path=str(path))
        col = client.create_collection("bench", metadata={"hnsw:space": "ip"})
        for s in range(0, n, 5000):
            col.add(ids=[str(i) for i in range(s, min(n, s + 5000))], embeddings=vecs[s:s + 5000].tolist(),
                    documents=[f"doc {i}" for i in range(s, min(n, s + 5000))])
        add, upd = [], []
        for rep in range(repeats):
            v = vecs[rep].tolist()
            t0 = time.perf_counter()
            col.add(ids=[f"new{rep}"], embeddings=[v], documents=["new"])
            add.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            col.upsert(ids=[str(rep)], embeddings=[v], documents=["updated"])
            upd.append(time.perf_counter() - t0)
        out["chroma"] = {"version": chromadb.__version__, "add_ms": round(med(add) * 1000, 2),
                         "update_ms": round(med(upd) * 1000, 2)}
    except ImportError:
        out["chroma"] = "not installed (pip install chromadb)"
    try:
        import lancedb
        import pyarrow as pa

        path = work / "lance"
        shutil.rmtree(path, ignore_errors=True)
        db = lancedb.connect(str(path))
        table = db.create_table("bench", pa.table({"id": [str(i) for i in range(n)], "text": [f"doc {i}" for i in range(n)],
                                                   "vector": list(vecs)}))
        add, upd = [], []
        for rep in range(repeats):
            t0 = time.perf_counter()
            table.add([{"id": f"new{rep}", "text": "new", "vector": vecs[rep]}])
            add.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            (table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
             .execute([{"id": str(rep), "text": "updated", "vector": vecs[rep]}]))
            upd.append(time.perf_counter() - t0)
        out["lancedb"] = {"version": lancedb.__version__, "add_ms": round(med(add) * 1000, 2),
                          "update_ms": round(med(upd) * 1000, 2)}
    except ImportError:
        out["lancedb"] = "not installed (pip install lancedb)"
    return out


def vs_peers(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, Any]:
    """Our one-document add and update (the large store, both publish modes) over each
    peer's, medians of the same run."""
    out: dict[str, Any] = {}
    for name, figures in peer.items():
        if not isinstance(figures, dict):
            continue
        for kind in ("add", "update"):
            for mode, key in (("background", "in_process_s"), ("wait", "in_process_wait_s")):
                out[f"{kind}_{mode}_over_{name}"] = round(ours[kind][key] * 1000 / figures[f"{kind}_ms"], 2)
    return out


def storage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = catalog_texts(CATALOG / "catalog.jsonl")
    result: dict[str, Any] = {"encoder": "hash-384 (deterministic test encoder, not a language model)",
                              "index_type": "flat"}
    serial = [0]
    for label, n in (("small", args.small), ("large", args.docs)):
        folder = work / f"store-{label}"
        log(f"storage: batched ingest of {n:,} documents in batches of {args.batch:,}")
        r, ingest = batched_ingest(folder, base, n, args.batch)
        figures: dict[str, Any] = {"ingest": ingest}
        # The first change after a merge unlinks the merged-away segment files and unmaps
        # them (the previous generation kept them); the worker's next cycle pays that.
        t0 = time.perf_counter()
        r.ingest([{"id": "bench-after-merge", "text": "the first change after the last merge"}], wait=True)
        figures["first_change_after_merge_s"] = round(time.perf_counter() - t0, 4)
        log("  one-document add, update, delete")
        figures["one_document"] = one_document(folder, r, args.repeats, serial)
        log("  a long-lived reader following new generations")
        figures["reader"] = reader_follow(folder, r)
        r.close()
        log("  cold `retrieve search`")
        figures["cold_search_s"] = cold_search(folder)
        if label == "large" or args.rss_small:
            log("  `retrieve serve` RSS")
            figures["serve"] = serving_rss(folder, n)
        result[label] = figures
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    small, large = result["small"], result["large"]
    add_s, add_l = small["one_document"]["add"], large["one_document"]["add"]
    result["ratios_large_over_small"] = {
        "add_index_stage": round(add_l["index_stage_s"] / add_s["index_stage_s"], 2),
        "add_in_process": round(add_l["in_process_s"] / add_s["in_process_s"], 2),
        "cold_search": round(large["cold_search_s"] / small["cold_search_s"], 2),
        "reader_open": round(large["reader"]["open_new_generation_ms"]
                             / max(small["reader"]["open_new_generation_ms"], 1e-6), 2),
    }
    return result


def run_peers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """:func:`peers` here, or in ``--peers-python`` (an environment with chromadb and
    lancedb, kept apart from this project's)."""
    log(f"peers: {args.peer_docs:,} planted vectors, one-document add and update")
    if not args.peers_python:
        return peers(args.peer_docs, args.repeats, work)
    proc = subprocess.run([args.peers_python, __file__, "--peers-only", "--peer-docs", str(args.peer_docs),
                           "--repeats", str(args.repeats), "--work", str(work)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-500:]}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- search on real vectors -----------------------------------------------------------


def real_vectors(args: argparse.Namespace) -> tuple[Any, list[str], np.ndarray, list[str], np.ndarray]:
    from retrieval.config import load_settings
    from retrieval.embed import encoder_for

    settings = load_settings(overrides={"progress": False}, environ={})
    encoder = encoder_for(settings)
    seen: set[str] = set()
    texts: list[str] = []
    with open(CATALOG / "catalog-100k.jsonl", encoding="utf-8") as fh:
        for line in fh:
            t = (json.loads(line).get("text") or "").strip()
            if t and t not in seen:
                seen.add(t)
                texts.append(t)
    if len(texts) < args.search_docs + args.queries:
        extra = catalog_texts(CATALOG / "catalog.jsonl")
        texts += [t for t in extra if t not in seen and not seen.add(t)][: args.search_docs + args.queries - len(texts)]
    docs, queries = texts[: args.search_docs], texts[args.search_docs: args.search_docs + args.queries]
    safe = encoder.model_key.replace("|", "_").replace("/", "_")
    cache = Path(args.cache).expanduser() / f"catalog-{args.search_docs}-{args.queries}-{safe}.npz"
    if cache.is_file():
        data = np.load(cache)
        log(f"search: cached vectors {cache}")
        return encoder, docs, data["docs"], queries, data["queries"]
    log(f"search: embedding {len(docs):,} catalog texts once with {encoder.model_key} (cached in {cache.parent})")
    t0 = time.perf_counter()
    dv = encoder.encode(docs)
    qv = encoder.encode_queries(queries)
    log(f"  embedded in {time.perf_counter() - t0:.0f}s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, docs=dv, queries=qv)
    return encoder, docs, dv, queries, qv


def search_bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import faiss

    from retrieval.index.segment import set_search_threads
    from retrieval.retriever import Retriever
    from retrieval.store.records import content_hash

    encoder, docs, dv, queries, qv = real_vectors(args)

    def planted(folder: Path, n: int) -> Any:
        shutil.rmtree(folder, ignore_errors=True)
        r = Retriever.open(folder, index_type="auto", progress=False)
        r.encoder = encoder
        r.store.add_embeddings(encoder.model_key, encoder.dim, [(content_hash(t), v) for t, v in zip(docs[:n], dv[:n])])
        for s in range(0, n, args.batch):
            r.ingest([{"id": f"p{i}", "text": docs[i]} for i in range(s, min(n, s + args.batch))], wait=True)
            r.merge()
        return r

    # Cold `retrieve search` (real model, auto) at the small size and at this one.
    small = planted(work / "store-search-small", min(args.small, len(docs)))
    small.close()
    cold_small = cold_search(work / "store-search-small", env=env_for(work / "store-search-small", "all-MiniLM-L6-v2", "auto"))
    folder = work / "store-search"
    t0 = time.perf_counter()
    r = planted(folder, len(docs))
    settle = time.perf_counter() - t0
    segments = r.status()["segments"]
    log(f"  auto settled in {settle:.0f}s: " + ", ".join(f"{s['type']} {s['documents']:,}" for s in segments))
    set_search_threads(1)
    faiss.omp_set_num_threads(1)
    k = 10
    exact = faiss.IndexFlatIP(dv.shape[1])
    exact.add(np.ascontiguousarray(dv))
    scores_exact, _ = exact.search(qv, k)
    kth = scores_exact[:, k - 1]
    out: dict[str, Any] = {"documents": len(docs), "queries": len(qv), "model_key": encoder.model_key,
                           "segments": segments, "settle_seconds": round(settle, 1),
                           "cold_search_s": {"small": cold_small, "large": cold_search(folder, env=env_for(
                               folder, "all-MiniLM-L6-v2", "auto"))}}
    out["cold_search_s"]["ratio"] = round(out["cold_search_s"]["large"] / out["cold_search_s"]["small"], 2)

    version = r.current_index()
    t_idx, res = timed(lambda q: version.search(q, k), qv)
    found = np.concatenate([s for s, _ in res])
    out["auto_index"] = {"p50_ms": round(med(t_idx) * 1000, 3), "p99_ms": round(pct(t_idx, 99) * 1000, 3),
                         "recall@10": round(recall_at(found, kth), 4)}
    t_pipe, _ = timed(lambda q: r.search_vectors(q, k), qv)
    out["auto_pipeline"] = {"p50_ms": round(med(t_pipe) * 1000, 3), "p99_ms": round(pct(t_pipe, 99) * 1000, 3)}
    hnsw_segments = [s for s in segments if s["type"] == "hnsw"]
    ef = max([s["ef_search"] for s in hnsw_segments] or [r.settings.index.hnsw_ef_search])
    log(f"  monolithic HNSW over {len(docs):,} vectors (M={r.settings.index.hnsw_m}, efConstruction=100)")
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    mono = faiss.IndexHNSWFlat(dv.shape[1], r.settings.index.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    mono.hnsw.efConstruction = 100
    mono.add(np.ascontiguousarray(dv))
    build = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    curve = {}
    for e in sorted({16, 32, 64, 128, ef}):
        params = faiss.SearchParametersHNSW(efSearch=e)
        t, res = timed(lambda q, p=params: mono.search(q, k, params=p), qv)
        curve[e] = {"p50_ms": round(med(t) * 1000, 3), "p99_ms": round(pct(t, 99) * 1000, 3),
                    "recall@10": round(recall_at(np.concatenate([s for s, _ in res]), kth), 4)}
    out["monolithic_hnsw"] = {"build_seconds": round(build, 1), "ef_search": ef, **curve[ef], "curve": curve}
    equal = [e for e, c in sorted(curve.items()) if c["recall@10"] >= out["auto_index"]["recall@10"]]
    out["monolithic_at_equal_recall"] = {"ef_search": equal[0], **curve[equal[0]]} if equal else None
    t_flat, _ = timed(lambda q: exact.search(q, k), qv)
    out["flat"] = {"p50_ms": round(med(t_flat) * 1000, 3), "p99_ms": round(pct(t_flat, 99) * 1000, 3), "recall@10": 1.0}
    r.close()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


# -- report --------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}"]
    st = result.get("storage")
    if st:
        lines.append(f"storage ({st['encoder']}, index_type {st['index_type']})")
        lines.append(f"{'':34} {'small':>14} {'large':>14} {'ratio':>7}")
        s, g = st["small"], st["large"]

        def row(name: str, a: float, b: float, fmt: str = "{:.4f}") -> None:
            ratio = b / a if a else float("nan")
            lines.append(f"{name:34} {fmt.format(a):>14} {fmt.format(b):>14} {ratio:>7.2f}")

        row("documents", s["ingest"]["documents"], g["ingest"]["documents"], "{:,}")
        row("max segments during ingest", s["ingest"]["max_segments"], g["ingest"]["max_segments"], "{:d}")
        row("write amplification", s["ingest"]["write_amplification"], g["ingest"]["write_amplification"], "{:.2f}")
        for kind in ("add", "update", "delete"):
            a, b = s["one_document"][kind], g["one_document"][kind]
            row(f"{kind}: process s", a["process_s"], b["process_s"])
            row(f"{kind}: in process s (background)", a["in_process_s"], b["in_process_s"])
            row(f"{kind}: its publish after s", a["publish_after_s"], b["publish_after_s"])
            row(f"{kind}: in process s (wait)", a["in_process_wait_s"], b["in_process_wait_s"])
            if "index_stage_s" in a:
                row(f"{kind}: index stage s", a["index_stage_s"], b["index_stage_s"])
            row(f"{kind}: bytes written (process)", a["process_bytes"], b["process_bytes"], "{:,.0f}")
            row(f"{kind}: bytes written (in process)", a["in_process_bytes"], b["in_process_bytes"], "{:,.0f}")
        row("reader opens a new generation ms", s["reader"]["open_new_generation_ms"], g["reader"]["open_new_generation_ms"],
            "{:.3f}")
        row("cold retrieve search s", s["cold_search_s"], g["cold_search_s"], "{:.3f}")
        if "serve" in g:
            lines.append(f"serve RSS at {g['ingest']['documents']:,}: {g['serve']['rss_bytes'] / 2**20:,.0f} MiB = "
                         f"{g['serve']['rss_over_vectors']:.2f}x the float32 vectors")
    if "peers" in result:
        lines.append(f"peers at {result.get('peer_docs', '')}: {json.dumps(result['peers'])}")
    if "vs_peers" in result:
        lines.append(f"ours (large store) over the peers': {json.dumps(result['vs_peers'])}")
    se = result.get("search")
    if se:
        lines.append(f"search on {se['documents']:,} real vectors ({se['model_key']}), {se['queries']} queries, k=10, 1 thread")
        lines.append("segments: " + ", ".join(f"{s['type']} {s['documents']:,}" for s in se["segments"]))
        c = se["cold_search_s"]
        lines.append(f"cold retrieve search (real model, auto): {c['small']:.3f} s at the small size, "
                     f"{c['large']:.3f} s here ({c['ratio']:.2f}x)")
        for name in ("auto_index", "auto_pipeline", "monolithic_hnsw", "monolithic_at_equal_recall", "flat"):
            f = se.get(name)
            if f:
                rec = f" recall@10 {f['recall@10']:.4f}" if "recall@10" in f else ""
                efs = f" efSearch {f['ef_search']}" if "ef_search" in f else ""
                lines.append(f"  {name:28} p50 {f['p50_ms']:7.3f} ms  p99 {f['p99_ms']:7.3f} ms{rec}{efs}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--cache", default="~/.cache/retrieval-bench")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--skip-search", action="store_true")
    parser.add_argument("--peers", action="store_true", help="also time Chroma and LanceDB (when installed)")
    parser.add_argument("--peer-docs", type=int, default=100_000)
    parser.add_argument("--peers-python", help="interpreter of an environment with chromadb and lancedb")
    parser.add_argument("--peers-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rss-small", action="store_true", help="measure serve RSS at the small size too")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    import tempfile

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.peers_only:
        print(json.dumps(peers(args.peer_docs, args.repeats, work)))
        return 0
    result: dict[str, Any] = {"machine": machine(), "command": " ".join(sys.argv)}
    if not args.skip_storage:
        result["storage"] = storage(args, work)
    if args.peers:
        result["peers"] = run_peers(args, work)
        result["peer_docs"] = args.peer_docs
        if "storage" in result:
            result["vs_peers"] = vs_peers(result["storage"]["large"]["one_document"], result["peers"])
    if not args.skip_search:
        result["search"] = search_bench(args, work)
    print(table(result), file=sys.stderr)
    line = json.dumps(result)
    if args.out:
        Path(args.out).write_text(line + "\n")
    print(line)
    if not args.keep and not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


