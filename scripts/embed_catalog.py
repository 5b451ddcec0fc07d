#!/usr/bin/env python
"""Embed the whole catalog (``../shared/data/catalog/catalog.jsonl``, 784,692 texts) once
per machine with the real model, cached outside the repository, for the search figures of
``scripts/bench_scale.py``.

Each distinct text is embedded once (with the default encoder setting, as
``retrieve ingest`` would); the cache holds every row's vector in file order. Work is saved
in parts of 50,000 texts, so a run that is stopped resumes where it was.

    HF_HUB_OFFLINE=1 python scripts/embed_catalog.py            # ~/.cache/retrieval-bench
    HF_HUB_OFFLINE=1 python scripts/embed_catalog.py --limit 100000

Prints the cache file's path.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog.jsonl"
PART = 50_000
sys.path.insert(0, str(REPO))


def catalog_texts(path: Path, limit: int | None) -> list[str]:
    texts: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            texts.append((json.loads(line).get("text") or "").strip())
            if limit and len(texts) >= limit:
                break
    return texts


def cache_path(cache: str, model_key: str, rows: int) -> Path:
    safe = model_key.replace("|", "_").replace("/", "_")
    return Path(cache).expanduser() / f"catalog-all-{rows}-{safe}.npy"


def embed_catalog(cache: str = "~/.cache/retrieval-bench", limit: int | None = None) -> tuple[Path, list[str]]:
    """The cache file of every catalog row's vector (embedding what is missing), and the texts."""
    from retrieval.config import load_settings
    from retrieval.embed import encoder_for

    encoder = encoder_for(load_settings(overrides={"progress": False}, environ={}))
    texts = catalog_texts(CATALOG, limit)
    out = cache_path(cache, encoder.model_key, len(texts))
    if out.is_file():
        return out, texts
    distinct = list(dict.fromkeys(texts))
    parts = out.parent / (out.stem + ".parts")
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in range(0, len(distinct), PART):
        part = parts / f"{start:08d}.npy"
        if part.is_file():
            continue
        vectors = encoder.encode(distinct[start:start + PART]).astype(np.float32)
        np.save(part.with_suffix(".tmp.npy"), vectors)
        part.with_suffix(".tmp.npy").rename(part)
        done = min(start + PART, len(distinct))
        print(f"[embed] {done:,}/{len(distinct):,} distinct texts, {time.perf_counter() - t0:.0f}s", file=sys.stderr,
              flush=True)
    vectors = np.concatenate([np.load(parts / f"{s:08d}.npy") for s in range(0, len(distinct), PART)])
    where = {t: i for i, t in enumerate(distinct)}
    rows = vectors[np.fromiter((where[t] for t in texts), np.int64, len(texts))]
    np.save(out.with_suffix(".tmp.npy"), rows)
    out.with_suffix(".tmp.npy").rename(out)
    for p in parts.iterdir():
        p.unlink()
    parts.rmdir()
    return out, texts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default="~/.cache/retrieval-bench")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    args = parser.parse_args()
    path, _ = embed_catalog(args.cache, args.limit)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
