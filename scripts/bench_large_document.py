#!/usr/bin/env python
"""Keyword and hybrid search over a store holding one large matching document, against
the same search over the same store without it.

Each store holds the same ``--docs`` short documents (the first rows of
``../shared/data/catalog/catalog.jsonl``, generated text where it is missing); each
"with" store adds one document of ``--sizes`` MB of real-looking text (later catalog
rows, one after the other) that holds the queries' terms every ``--spacing`` KB and once
more in its last KB. The queries are catalog words found in only a few short
documents, so the large document is among every keyword search's hits. Stores are
embedded with the test encoder ``hash-384``. A 1 MB document goes in through
``Retriever.ingest``; larger ones, over the 1 MiB document limit, are written with
``Store.upsert`` and embedded by ``sync``, as stores written before the limit hold them.

For every store, ``--repeats`` rounds of all queries after a warm-up, of each of:

* ``keyword`` and ``hybrid``: ``Retriever.search(q, k=10, mode=...)``, snippets included
  (the hits carry the documents' whole texts, the large one too);
* ``ranking + snippets``: the store-level ``keyword_search`` (BM25 ranking, then the
  hits' snippets), without reading the hits' rows;
* ``ranking only``: the same without snippets.

Reported: the median time of one search, and its ratio to the store without the large
document, measured in the same process. The issue's target: a keyword search over a
store holding a 1 MB matching document takes at most 3x the same search without it.

    HF_HUB_OFFLINE=1 python scripts/bench_large_document.py
    HF_HUB_OFFLINE=1 python scripts/bench_large_document.py --sizes 1 --repeats 10   # quick look

Prints a table to stderr and one JSON line to stdout, and writes ``--out``
(bench/large_document.json).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog.jsonl"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import machine  # noqa: E402

MODEL = "hash-384"
TARGET_RATIO = 3.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_model() -> str:
    """``Model name`` as lscpu prints it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no lscpu)"
    for line in out.splitlines():
        if line.strip().startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def texts(n: int, seed: int) -> list[str]:
    """``n`` short texts: catalog rows in file order, or generated sentences without it."""
    out: list[str] = []
    if CATALOG.exists():
        with CATALOG.open(encoding="utf-8") as fh:
            for line in fh:
                text = json.loads(line).get("text", "").strip()
                if text:
                    out.append(text)
                if len(out) >= n:
                    return out
    rng = random.Random(seed)
    words = ("data fast library client server python model search index query tool simple async web "
             "network image parser plugin driver cloud storage format stream cache config test").split()
    while len(out) < n:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))).capitalize() + ".")
    return out


def pick_queries(r: Any, short: list[str], count: int, max_hits: int) -> list[str]:
    """``count`` words of at least 6 letters whose keyword search over the short
    documents finds 2 to ``max_hits`` of them (stemming included), so that a search's
    k=10 hits have room for the large document."""
    df: Counter[str] = Counter()
    for text in short:
        df.update({w.lower() for w in re.findall(r"[A-Za-z]{6,}", text)})
    words = sorted(w for w, n in df.items() if 2 <= n <= max_hits)
    random.Random(7).shuffle(words)
    return [w for w in words if 2 <= len(r.search(w, k=10, mode="keyword")) <= max_hits][:count]


def large_text(size: int, filler: list[str], terms: list[str], spacing: int) -> str:
    """About ``size`` bytes of filler sentences with ``terms`` every ``spacing`` bytes and
    once more in the last KB."""
    parts: list[str] = []
    n = 0
    since = 0
    i = 0
    terms_line = "This note mentions " + ", ".join(terms) + "."
    while n < size - 1024:
        sentence = filler[i % len(filler)]
        i += 1
        if since >= spacing:
            parts.append(terms_line)
            n += len(terms_line) + 1
            since = 0
        parts.append(sentence)
        n += len(sentence.encode()) + 1
        since += len(sentence.encode()) + 1
    parts.append(terms_line)  # near the end
    n += len(terms_line) + 1
    while n < size:
        sentence = filler[i % len(filler)]
        i += 1
        parts.append(sentence)
        n += len(sentence.encode()) + 1
    return " ".join(parts)


def open_store(folder: Path) -> Any:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    settings = load_settings(overrides={"database_url": f"sqlite:///{folder / 'retrieval.db'}",
                                        "index_dir": str(folder / "index"), "progress": False, "model": MODEL},
                             environ={})
    return Retriever.from_settings(settings)


def build(folder: Path, short: list[str], large: str | None) -> Any:
    from retrieval.store.records import NewDocument

    r = open_store(folder)
    # Published before the searches below, which measure the index, not pending documents.
    r.ingest([{"id": f"short-{i}", "text": t, "metadata": {}} for i, t in enumerate(short)], wait=True)
    if large is not None:
        if len(large.encode()) <= 1 << 20:
            r.ingest([{"id": "large", "text": large, "metadata": {}}], wait=True)
        else:  # over the document limit: as a store written before it holds one
            r.store.upsert([NewDocument("large", large, {})])
            r.sync()
    return r


def timed(fn: Callable[[str], Any], queries: list[str], repeats: int) -> list[float]:
    for q in queries:  # warm-up: page cache, regular expressions, the scratch FTS5 table
        fn(q)
    times: list[float] = []
    for _ in range(repeats):
        for q in queries:
            t0 = time.perf_counter()
            fn(q)
            times.append(time.perf_counter() - t0)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1, 2, 10], help="large document sizes, MB")
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--spacing", type=int, default=20, help="KB between the terms in the large document")
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "large_document.json"))
    args = parser.parse_args()

    from retrieval.store.keyword import keyword_search
    from retrieval.store.windows import SNIPPET_MAX_TOKENS

    pool = texts(args.docs + 60_000, args.seed)
    short, filler = pool[: args.docs], pool[args.docs:]
    log(f"{machine()}\nCPU (lscpu): {cpu_model()}")

    modes: dict[str, Callable[[Any], Callable[[str], Any]]] = {
        "keyword": lambda r: lambda q: r.search(q, k=10, mode="keyword"),
        "hybrid": lambda r: lambda q: r.search(q, k=10, mode="hybrid"),
        "ranking + snippets": lambda r: lambda q: _store_search(r, q, keyword_search, snippets=True),
        "ranking only": lambda r: lambda q: _store_search(r, q, keyword_search, snippets=False),
    }
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        stores: dict[str, Any] = {"without": build(Path(tmp) / "without", short, None)}
        queries = pick_queries(stores["without"], short, args.queries, max_hits=6)
        log(f"{args.docs} short documents; queries {queries}")
        for mb in args.sizes:
            t0 = time.perf_counter()
            text = large_text(int(mb * 1_000_000), filler, queries, args.spacing * 1000)
            stores[f"{mb:g} MB"] = build(Path(tmp) / f"with-{mb:g}", short, text)
            log(f"  store with a {len(text.encode()) / 1e6:.2f} MB document built in {time.perf_counter() - t0:.1f}s")
        # The large document must be among the hits, or the comparison says nothing.
        found: dict[str, dict[str, float]] = {}
        for label, r in stores.items():
            if label == "without":
                continue
            found[label] = {mode: sum(any(h.id == "large" for h in r.search(q, k=10, mode=mode)) for q in queries)
                            / len(queries) for mode in ("keyword", "hybrid")}
        medians: dict[str, dict[str, float]] = {}
        for mode, make in modes.items():
            for label, r in stores.items():
                medians.setdefault(mode, {})[label] = statistics.median(timed(make(r), queries, args.repeats)) * 1000
        for r in stores.values():
            r.close()
    for mode, by_store in medians.items():
        base = by_store["without"]
        results[mode] = {label: {"median_ms": round(ms, 3), "ratio": round(ms / base, 2)} for label, ms in by_store.items()}
    one_mb = results["keyword"].get("1 MB")
    result = {
        "machine": machine(), "cpu_model": cpu_model(), "documents": args.docs, "queries": queries, "k": 10,
        "repeats": args.repeats, "sizes_mb": args.sizes, "spacing_kb": args.spacing, "model": MODEL,
        "snippet_max_tokens": SNIPPET_MAX_TOKENS, "large_document_in_hits": found, "results": results,
        "target": {"keyword_1mb_ratio_max": TARGET_RATIO,
                   "met": one_mb["ratio"] <= TARGET_RATIO if one_mb is not None else None},
        "command": "HF_HUB_OFFLINE=1 python scripts/bench_large_document.py " + " ".join(sys.argv[1:]),
    }
    log(f"\nmedian ms of a search (k=10) over {len(queries)} queries x {args.repeats} repeats; ratio to the store "
        "without the large document")
    labels = list(next(iter(medians.values())))
    log(f"{'mode':>20} " + " ".join(f"{label:>18}" for label in labels))
    for mode, row in results.items():
        log(f"{mode:>20} " + " ".join(f"{row[label]['median_ms']:>9.3f} (x{row[label]['ratio']:<5})" for label in labels))
    log(f"large document among the hits (share of queries): {found}")
    if one_mb is not None:
        log(f"target: keyword search with a 1 MB document at most x{TARGET_RATIO:g}: "
            f"x{one_mb['ratio']} ({'met' if result['target']['met'] else 'NOT met'})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


def _store_search(r: Any, query: str, keyword_search: Callable[..., Any], *, snippets: bool) -> Any:
    """The store's keyword search: the ranking query, and the hits' snippets if asked
    (no rows read)."""
    with r.store.connection() as conn:
        return keyword_search(conn, query, 10, snippets=snippets)


if __name__ == "__main__":
    raise SystemExit(main())
