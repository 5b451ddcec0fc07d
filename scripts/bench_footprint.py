#!/usr/bin/env python
"""Bytes per document, measured: the database (SQLite and PostgreSQL) and each kind of
index segment, for the sizing plan in docs/scaling.md.

``--docs`` catalog documents (text and metadata as `retrieve ingest` stores them) get a
random unit 384-d vector each (as the model's would take: 1,536 bytes of float32) and are
stored through ``Store`` in a fresh SQLite file and a fresh PostgreSQL database (a
throwaway server from scripts/postgres.sh, unless ``--postgres-url``); reported is each
database's size on disk over the documents (tables, indexes, change log, WAL for SQLite).
The same vectors then go into FAISS indexes written to disk: flat (what `index_type:
flat` segments are), HNSW32 (what `hnsw` segments are: M=32, efConstruction 100) and
IVF-SQ8 (1-byte scalar codes, which this project does not build; shown for the plan),
each as bytes of the serialised index per vector, plus the 8-byte ids a segment keeps.

    python scripts/bench_footprint.py               # 100,000 documents
    python scripts/bench_footprint.py --docs 20000

Prints a table to stderr and writes the JSON to ``--out`` (bench/footprint.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
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

DIM = 384


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fill(url: str, docs: list[NewDocument], vectors: np.ndarray) -> int:
    store = Store.open(url)
    try:
        store.upsert(docs)
        hashes = list(dict.fromkeys(content_hash(d.text) for d in docs))
        for start in range(0, len(hashes), EMBED_CHUNK):
            part = hashes[start : start + EMBED_CHUNK]
            store.add_embeddings("footprint|384", DIM, list(zip(part, vectors[start : start + len(part)])))
        return store.database_bytes()
    finally:
        store.close()


def index_bytes(vectors: np.ndarray, folder: Path) -> dict[str, float]:
    import faiss

    n = len(vectors)
    out: dict[str, float] = {}
    flat = faiss.IndexFlatIP(DIM)
    hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 100
    nlist = max(16, int(4 * np.sqrt(n)))
    quantizer = faiss.IndexFlatIP(DIM)
    ivf = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_8bit,
                                        faiss.METRIC_INNER_PRODUCT)
    ivf.train(vectors[: min(n, 50 * nlist)])
    for name, index in (("flat", flat), ("hnsw32", hnsw), ("ivf_sq8", ivf)):
        index.add(vectors)
        path = folder / f"{name}.faiss"
        faiss.write_index(index, str(path))
        # + the int64 id of every row that a segment keeps beside its index
        out[name] = (path.stat().st_size + 8 * n) / n
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--postgres-url")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "footprint.json")
    args = ap.parse_args()
    docs = catalog_documents(CATALOG, args.docs)
    distinct = len({content_hash(d.text) for d in docs})
    vectors = np.random.default_rng(0).standard_normal((distinct, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    text_bytes = sum(len(d.text.encode()) for d in docs) / len(docs)
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        folder = Path(tmp)
        sqlite = fill(f"sqlite:///{folder / 'f.db'}", docs, vectors)
        pg_url, pg_dir = args.postgres_url, None
        if not pg_url:
            pg_dir = Path(tempfile.mkdtemp(prefix="bench-footprint-pg-"))  # postgres.sh gives it to the postgres user
            pg_url = subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "start", str(pg_dir)],
                                    capture_output=True, text=True, check=True, env={**os.environ}).stdout.strip()
        try:
            import psycopg
            from sqlalchemy.engine import make_url

            admin = make_url(pg_url).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute("DROP DATABASE IF EXISTS footprint")
                conn.execute("CREATE DATABASE footprint")
            empty = fill(str(make_url(pg_url).set(database="footprint")), [], vectors[:0])
            postgres = fill(str(make_url(pg_url).set(database="footprint")), docs, vectors) - empty
        finally:
            if pg_dir is not None:
                subprocess.run(["bash", str(REPO / "scripts" / "postgres.sh"), "stop", str(pg_dir)], check=False)
                shutil.rmtree(pg_dir, ignore_errors=True)
        indexes = index_bytes(vectors, folder)
    out: dict[str, Any] = {
        "machine": machine(), "documents": len(docs), "distinct_texts": distinct,
        "mean_text_bytes": round(text_bytes, 1),
        "database_bytes_per_document": {"sqlite": round(sqlite / len(docs)), "postgresql": round(postgres / len(docs))},
        "index_bytes_per_vector": {k: round(v) for k, v in indexes.items()},
        "command": "python scripts/bench_footprint.py " + " ".join(sys.argv[1:]),
    }
    log(f"{machine()}; {len(docs):,} documents ({distinct:,} distinct texts, {text_bytes:.0f} bytes of text on average)")
    for name, value in out["database_bytes_per_document"].items():
        log(f"  database {name:>10}: {value:6,} bytes per document")
    for name, value in out["index_bytes_per_vector"].items():
        log(f"  index    {name:>10}: {value:6,} bytes per vector")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
