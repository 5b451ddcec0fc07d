"""The benchmark report: ingest throughput by stage and search latency against recall,
with the naive baseline measured in the same run.

For each size N (documents from ../shared/data/catalog, first N rows):

* **ingest**: ``Retriever.ingest_files`` of a JSONL file into a fresh store, split into
  stages: read + validate + store rows, embed, index build + publish (the sync's own
  timers). The naive baseline is ``model.encode(texts, batch_size=64)`` of the same texts.
* **search**: per-query latency and recall@10 against exact search, for the flat index,
  HNSW at several ``hnsw_ef_search`` values, and the naive numpy brute force.
  "search" latency excludes query encoding (query vectors are computed once), so the
  index types can be told apart; "end to end" (flat and naive) includes it.

Every figure is the median of ``--repeats`` runs, with min and max. Ingest is repeated in
full (embedding is what it measures). Search repeats reuse the embeddings stored by the
first ingest: indexes are rebuilt from stored vectors, never re-embedded.

Queries are catalog rows that are *not* among the indexed documents (every 50th row
after row 100,000 of catalog.jsonl).

Writes ``bench/report.md``, ``bench/report.json``, ``bench/ingest_throughput.png`` and
``bench/latency_recall.png``::

    HF_HUB_OFFLINE=1 python scripts/bench.py                          # 20,000 and 100,000
    HF_HUB_OFFLINE=1 python scripts/bench.py --sizes 2000 --repeats 2 # a quick check
    RETRIEVE_MODEL=hash-384 python scripts/bench.py --sizes 100000    # storage and search only

With the test encoder (``RETRIEVE_MODEL=hash-384``) nothing is a language model: the
figures measure storage, indexing and search, and the naive embedding baseline is the
same encoder called without the project's batching.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "catalog"
sys.path.insert(0, str(REPO))

from benchlib import machine  # noqa: E402
from retrieval.config import Settings, load_settings  # noqa: E402
from retrieval.evaluation import exact_recall  # noqa: E402
from retrieval.retriever import Retriever  # noqa: E402

K = 10
QUERY_STRIDE = 50
QUERY_START = 100_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values)),
            "runs": len(values)}


def read_catalog(n: int, queries: int) -> tuple[list[str], list[str]]:
    """The first ``n`` catalog lines (raw JSONL) and ``queries`` query texts outside them."""
    small = DATA / "catalog-100k.jsonl"
    path = small if n <= QUERY_START and small.is_file() else DATA / "catalog.jsonl"
    with open(path, encoding="utf-8") as fh:
        lines = list(itertools.islice(fh, n))
    if len(lines) < n:
        raise SystemExit(f"{path} has only {len(lines)} rows; asked for {n}")
    start = max(QUERY_START, n)
    texts: list[str] = []
    with open(DATA / "catalog.jsonl", encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if i >= start and (i - start) % QUERY_STRIDE == 0:
                texts.append(json.loads(line)["text"])
                if len(texts) == queries:
                    break
    return lines, texts


def store_settings(base: Settings, folder: Path, **overrides: Any) -> Settings:
    return base.with_overrides("bench", database_url=f"sqlite:///{folder / 'retrieval.db'}",
                               index_dir=str(folder / "index"), **overrides)


def per_query_ms(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(1000 * (time.perf_counter() - t0))
    return out


def bench_size(n: int, args: argparse.Namespace, base: Settings, model: Any, work: Path) -> dict[str, Any]:
    lines, queries = read_catalog(n, args.queries)
    texts = [json.loads(line)["text"] for line in lines]
    docs_file = work / f"catalog-{n}.jsonl"
    docs_file.write_text("".join(lines), encoding="utf-8")
    result: dict[str, Any] = {"documents": n, "distinct_texts": len(set(texts)), "queries": len(queries)}

    # -- ingest: the project, then the naive baseline, alternating so that drift in
    # machine load affects both alike.
    stages: dict[str, list[float]] = {"store": [], "embed": [], "index": [], "total": []}
    naive_encode: list[float] = []
    keep: Path | None = None
    naive_matrix: np.ndarray | None = None
    embedded = 0
    for r in range(args.repeats):
        folder = work / f"store-{n}-{r}"
        log(f"N={n} repeat {r + 1}/{args.repeats}: ingest")
        with Retriever.from_settings(store_settings(base, folder)) as retriever:
            report = retriever.ingest_files([str(docs_file)])
        assert report.sync is not None
        sync_s = report.sync.seconds
        stages["store"].append(report.seconds - sync_s + report.sync.stages.get("read", 0.0))
        stages["embed"].append(report.sync.stages["embed"])
        stages["index"].append(report.sync.stages["index"])
        stages["total"].append(report.seconds)
        embedded = report.sync.embedded
        if keep is None:
            keep = folder  # its stored vectors serve every search measurement
        else:
            shutil.rmtree(folder, ignore_errors=True)
        log(f"N={n} repeat {r + 1}/{args.repeats}: naive encode")
        t0 = time.perf_counter()
        matrix = model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False)
        naive_encode.append(time.perf_counter() - t0)
        if naive_matrix is None:
            naive_matrix = np.asarray(matrix, dtype=np.float32)
    assert keep is not None and naive_matrix is not None
    result["embedded_texts"] = embedded
    result["ingest_seconds"] = {k: stats(v) for k, v in stages.items()}
    result["ingest_docs_per_second"] = {k: stats([n / s for s in v]) for k, v in stages.items()}
    result["naive_encode_seconds"] = stats(naive_encode)
    result["naive_encode_docs_per_second"] = stats([n / s for s in naive_encode])

    # -- search.
    search: list[dict[str, Any]] = []
    with Retriever.from_settings(store_settings(base, keep)) as flat:
        qvec = flat.encoder.encode_queries(queries)
        flat.search_vectors(qvec[:1], K)  # load the index before timing
        runs = [per_query_ms(lambda i: flat.search_vectors(qvec[i : i + 1], K), len(queries)) for _ in range(args.repeats)]
        e2e = [per_query_ms(lambda i: flat.search(queries[i], K), len(queries)) for _ in range(args.repeats)]
        search.append({"system": "flat", "ef_search": None, "recall_at_10": exact_recall(flat, qvec, K),
                       **latency_fields(runs), "end_to_end_ms": stats([statistics.median(x) for x in e2e])})

    # Naive: numpy brute force over the matrix from model.encode (normalised here, as
    # cosine needs; model.encode of all-MiniLM-L6-v2 already normalises).
    norms = np.linalg.norm(naive_matrix, axis=1, keepdims=True)
    unit = naive_matrix / np.where(norms > 0, norms, 1)

    def naive_search(q: np.ndarray) -> np.ndarray:
        scores = unit @ q
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top])]

    runs = [per_query_ms(lambda i: naive_search(qvec[i]), len(queries)) for _ in range(args.repeats)]

    def naive_e2e(i: int) -> None:
        naive_search(model.encode([queries[i]], convert_to_numpy=True, normalize_embeddings=True)[0])

    e2e = [per_query_ms(naive_e2e, len(queries)) for _ in range(args.repeats)]
    search.append({"system": "naive numpy", "ef_search": None, "recall_at_10": 1.0, **latency_fields(runs),
                   "end_to_end_ms": stats([statistics.median(x) for x in e2e])})

    hnsw_dir = work / f"hnsw-{n}"
    build: list[float] = []
    for r in range(args.repeats):
        # The same database, a second index folder: built from stored vectors only.
        shutil.rmtree(hnsw_dir, ignore_errors=True)
        settings = base.with_overrides("bench", database_url=f"sqlite:///{keep / 'retrieval.db'}",
                                       index_dir=str(hnsw_dir), index_type="hnsw")
        with Retriever.from_settings(settings) as hnsw:
            log(f"N={n} repeat {r + 1}/{args.repeats}: HNSW build")
            t0 = time.perf_counter()
            rep = hnsw.reindex()
            build.append(time.perf_counter() - t0)
            assert rep.embedded == 0, "the HNSW build must reuse stored vectors"
    result["hnsw_build_seconds"] = stats(build)
    for ef in args.ef_search:
        settings = base.with_overrides("bench", database_url=f"sqlite:///{keep / 'retrieval.db'}",
                                       index_dir=str(hnsw_dir), index_type="hnsw", hnsw_ef_search=ef)
        with Retriever.from_settings(settings) as hnsw:
            hnsw.search_vectors(qvec[:1], K)
            runs = [per_query_ms(lambda i: hnsw.search_vectors(qvec[i : i + 1], K), len(queries))
                    for _ in range(args.repeats)]
            search.append({"system": "hnsw", "ef_search": ef, "recall_at_10": exact_recall(hnsw, qvec, K),
                           **latency_fields(runs)})
    result["search"] = search
    shutil.rmtree(keep, ignore_errors=True)
    shutil.rmtree(hnsw_dir, ignore_errors=True)
    return result


class PlainEncoder:
    """``model.encode`` for an encoder of this project: texts in file order, no sorting."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder

    def encode(self, texts: list[str], **_options: Any) -> np.ndarray:
        return np.asarray(self.encoder.embed_batch(texts), dtype=np.float32)


def latency_fields(runs: list[list[float]]) -> dict[str, Any]:
    """Median and p95 per-query latency of each run, summarised over runs."""
    return {
        "search_ms": stats([statistics.median(r) for r in runs]),
        "search_p95_ms": stats([float(np.percentile(r, 95)) for r in runs]),
    }


def fmt(s: dict[str, float], digits: int = 1) -> str:
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def render(report: dict[str, Any]) -> str:
    out = [
        "# Benchmark report",
        "",
        f"Machine: {report['machine']}. Model: {report['model']}, encoder {report.get('encoder', 'torch fp32')}. "
        + " ".join(f"N={', '.join(f'{n:,}' for n in run['sizes'])}: created {run['created']} by `{run['command']}`."
                   for run in report.get("runs", [{"created": report["created"], "command": report["command"],
                                                   "sizes": [s["documents"] for s in report["sizes"]]}]))
        + f" Every figure: median (min–max) of {report['repeats']} runs.",
        "",
        "## Ingest throughput (documents per second)",
        "",
        "| N | distinct texts | store rows | embed | index | **total** | naive `model.encode` |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in report["sizes"]:
        d = size["ingest_docs_per_second"]
        out.append(f"| {size['documents']:,} | {size['distinct_texts']:,} | {fmt(d['store'], 0)} | {fmt(d['embed'], 0)} | "
                   f"{fmt(d['index'], 0)} | **{fmt(d['total'], 0)}** | {fmt(size['naive_encode_docs_per_second'], 0)} |")
    out += [
        "",
        "Stages are per document ingested: store = read, validate and write rows (and read them "
        "back for the sync); embed = the encoder (each distinct text once); index = build and publish "
        "the FAISS version. The naive baseline embeds every text, duplicates included.",
        "",
        f"## Search ({report['queries']} queries, top {K})",
        "",
        "| N | system | recall@10 vs exact | search ms/query | p95 ms | end to end ms/query |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for size in report["sizes"]:
        for row in size["search"]:
            name = row["system"] + (f" ef_search={row['ef_search']}" if row["ef_search"] is not None else "")
            e2e = fmt(row["end_to_end_ms"], 2) if "end_to_end_ms" in row else ""
            out.append(f"| {size['documents']:,} | {name} | {row['recall_at_10']:.4f} | {fmt(row['search_ms'], 3)} | "
                       f"{fmt(row['search_p95_ms'], 3)} | {e2e} |")
        out.append(f"| {size['documents']:,} | HNSW build (s) | | {fmt(size['hnsw_build_seconds'], 2)} | | |")
    out += [
        "",
        "search = the project's `search_vectors` (FAISS search plus fetching the hits' rows from SQLite), "
        "or for the naive baseline a numpy matrix product and partial sort; query encoding excluded. "
        "End to end = one `search(text)` call, encoding included.",
        "",
        "![ingest throughput](ingest_throughput.png) ![latency against recall](latency_recall.png)",
        "",
    ]
    return "\n".join(out)


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = report["sizes"]
    labels = ["store", "embed", "index", "total"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / (len(labels) + 1)
    for j, label in enumerate([*labels, "naive encode"]):
        xs, ys, lo, hi = [], [], [], []
        for i, size in enumerate(sizes):
            s = size["naive_encode_docs_per_second"] if label == "naive encode" else size["ingest_docs_per_second"][label]
            xs.append(i + (j - len(labels) / 2) * width)
            ys.append(s["median"])
            lo.append(s["median"] - s["min"])
            hi.append(s["max"] - s["median"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks(range(len(sizes)), [f"N={s['documents']:,}" for s in sizes])
    ax.set_yscale("log")
    ax.set_ylabel("documents per second (log)")
    ax.set_title("Ingest throughput by stage (median, min–max)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ingest_throughput.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(sizes), figsize=(5.5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for system, marker in (("flat", "s"), ("naive numpy", "^"), ("hnsw", "o")):
            rows = [r for r in size["search"] if r["system"] == system]
            xs = [r["recall_at_10"] for r in rows]
            ys = [r["search_ms"]["median"] for r in rows]
            err = [[r["search_ms"]["median"] - r["search_ms"]["min"] for r in rows],
                   [r["search_ms"]["max"] - r["search_ms"]["median"] for r in rows]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=system,
                        linestyle="-" if system == "hnsw" else "none")
            if system == "hnsw":
                for r in rows:
                    ax.annotate(f"ef={r['ef_search']}", (r["recall_at_10"], r["search_ms"]["median"]),
                                fontsize=7, textcoords="offset points", xytext=(4, 4))
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 against exact search")
        ax.set_ylabel("search latency, ms/query (median, log)")
        ax.set_title(f"N={size['documents']:,}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_recall.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,100000", help="comma-separated document counts")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", default="16,32,64,128,256", help="HNSW ef_search values to measure")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--merge", action="store_true",
                        help="keep the sizes of an existing OUT/report.json that this run does not measure "
                             "(rerun one size without rerunning the others)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    args.ef_search = [int(s) for s in args.ef_search.split(",") if s.strip()]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    base = load_settings(overrides={"progress": False})
    with tempfile.TemporaryDirectory(prefix="retrieve-bench-") as tmp:
        warm = Retriever.from_settings(store_settings(base, Path(tmp) / "warm"))
        warm.encoder.encode(["warm up"], progress=False)
        model_path = warm.encoder.info.path or base.encoder.model
        encoder_desc = f"{getattr(warm.encoder, 'backend', 'torch')} {getattr(warm.encoder, 'precision', 'fp32')}"
        language_model = warm.encoder.info.is_language_model
        if language_model:
            from sentence_transformers import SentenceTransformer

            model: Any = SentenceTransformer(model_path, device="cpu")
        else:
            # The test encoder (model hash-N, for storage benchmarks): no language model to
            # call naively, so the baseline is the same encoder, called plainly.
            model = PlainEncoder(warm.encoder)
        warm.close()
        model.encode(["warm up"])
        sizes = []
        for n in args.sizes:
            sizes.append(bench_size(n, args, base, model, Path(tmp)))

    import faiss

    versions = {"faiss": faiss.__version__, "openvino": importlib.metadata.version("openvino"),
                "onnxruntime": importlib.metadata.version("onnxruntime")}
    if language_model:
        import sentence_transformers
        import torch

        versions.update({"torch": torch.__version__, "sentence-transformers": sentence_transformers.__version__})

    command = (" ".join(["HF_HUB_OFFLINE=1", *(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("RETRIEVE_"))])
               + " python scripts/bench.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    created = datetime.now(UTC).isoformat(timespec="seconds")
    runs = [{"created": created, "command": command, "sizes": [s["documents"] for s in sizes]}]
    if args.merge and (args.out / "report.json").is_file():
        old = json.loads((args.out / "report.json").read_text(encoding="utf-8"))
        measured = {s["documents"] for s in sizes}
        kept = [s for s in old["sizes"] if s["documents"] not in measured]
        if kept:
            sizes = sorted([*sizes, *kept], key=lambda s: s["documents"])
            earlier = old.get("runs") or [{"created": old["created"], "command": old["command"],
                                           "sizes": [s["documents"] for s in old["sizes"]]}]
            for run in earlier:
                run["sizes"] = [n for n in run["sizes"] if n not in measured]
            runs = [r for r in earlier if r["sizes"]] + runs
    report = {
        "created": created,
        "command": command,
        "runs": runs,
        "machine": machine(),
        "versions": versions,
        "model": base.encoder.model,
        "encoder": encoder_desc,
        "repeats": args.repeats,
        "queries": args.queries,
        "sizes": sizes,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md = render(report)
    (args.out / "report.md").write_text(md, encoding="utf-8")
    plot(report, args.out)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
