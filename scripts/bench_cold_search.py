"""Cold `retrieve search` per encoder backend, and warm query-encoding latency.

For each setting (backend/precision, plus ``auto/auto``, the default) a store of ``--docs``
catalog documents (``<repo>/../shared/data/catalog/catalog-100k.jsonl``) is built with that
setting; then ``--repeats`` fresh processes each run ``python -m retrieval search QUERY -k 10``
against it (a different catalog query each time) and the wall time of the whole process is
taken: interpreter start, imports, opening the store, loading the index and the model,
encoding, searching and printing. Two baselines run in the same session, interleaved
with the settings: the bare interpreter (``python -c pass``, the floor) and the hand-rolled
script users start from (sentence-transformers loads the model, numpy loads the saved
matrix, one matrix product).

Warm query encoding: in one process per setting, ``encode_queries([q])`` for ``--queries``
single catalog queries after a warm-up; p50 and p99 in milliseconds.

Settings whose vectors share a model key (torch, onnx and openvino fp32) share one store.

    HF_HUB_OFFLINE=1 python scripts/bench_cold_search.py
    HF_HUB_OFFLINE=1 python scripts/bench_cold_search.py --docs 2000 --repeats 3   # quick look
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
SETTINGS = ("auto/auto", "torch/fp32", "onnx/fp32", "onnx/int8", "openvino/fp32", "openvino/bf16")

WARM = """
import json, statistics, sys, time
from retrieval.embed import create_encoder
backend, precision = sys.argv[1].split("/")
queries = json.loads(sys.stdin.read())
e = create_encoder("all-MiniLM-L6-v2", backend=backend, precision=precision, progress=False)
e.load()
for q in queries[:20]:
    e.encode_queries([q])
ms = []
for q in queries:
    t = time.perf_counter()
    e.encode_queries([q])
    ms.append(1000 * (time.perf_counter() - t))
ms.sort()
print(json.dumps({"p50": statistics.median(ms), "p99": ms[int(0.99 * (len(ms) - 1))],
                  "runs": len(ms), "runs_as": f"{getattr(e, 'backend', 'torch')} {getattr(e, 'precision', 'fp32')}"}))
"""

NAIVE = """
import sys
import numpy as np
from sentence_transformers import SentenceTransformer
model = SentenceTransformer(sys.argv[1], device="cpu")
matrix = np.load(sys.argv[2])
q = model.encode([sys.argv[3]], normalize_embeddings=True)[0]
scores = matrix @ q
top = np.argsort(-scores)[:10]
print(top.tolist())
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def env_for(folder: Path, backend: str, precision: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RETRIEVE_PROGRESS="false",
               RETRIEVE_BACKEND=backend, RETRIEVE_PRECISION=precision,
               RETRIEVE_DATABASE_URL=f"sqlite:///{folder / 'retrieval.db'}", RETRIEVE_INDEX_DIR=str(folder / "index"))
    return env


def wall(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=7, help="cold processes per setting")
    parser.add_argument("--queries", type=int, default=200, help="queries for the warm encoding latency")
    parser.add_argument("--setting", action="append", help=f"backend/precision (default: {', '.join(SETTINGS)})")
    parser.add_argument("--out", default=str(REPO / "bench"))
    args = parser.parse_args()
    settings = args.setting or list(SETTINGS)

    sys.path.insert(0, str(REPO))
    from retrieval.embed import create_encoder
    from retrieval.embed.choice import plan
    from retrieval.embed.model import resolve_model

    with open(CATALOG, encoding="utf-8") as fh:
        lines = list(itertools.islice(fh, args.docs + 5_000))
    docs, extra = lines[: args.docs], lines[args.docs :]
    queries = [json.loads(line)["text"] for line in extra[:: max(1, len(extra) // max(args.queries, args.repeats))]]

    info = resolve_model("all-MiniLM-L6-v2")
    result: dict[str, Any] = {"docs": args.docs, "repeats": args.repeats, "settings": {}}
    with tempfile.TemporaryDirectory(prefix="retrieve-cold-") as tmp:
        work = Path(tmp)
        data = work / "docs.jsonl"
        data.write_text("".join(docs), encoding="utf-8")
        stores: dict[str, Path] = {}
        runs_as: dict[str, tuple[str, str, str]] = {}
        for setting in settings:
            backend, precision = setting.split("/")
            chosen = plan(info, backend, precision)
            runs_as[setting] = (chosen.backend, chosen.precision, chosen.model_key)
            key = chosen.model_key
            if key not in stores:
                stores[key] = work / f"store-{len(stores)}"
                log(f"building a {args.docs}-document store for {key} with {setting}")
                t = time.perf_counter()
                wall([sys.executable, "-m", "retrieval", "ingest", str(data)], env_for(stores[key], backend, precision))
                log(f"  {time.perf_counter() - t:.1f} s")

        # The naive script's matrix: the same documents, torch fp32, saved as .npy.
        texts = [json.loads(line)["text"] for line in docs]
        torch_enc = create_encoder("all-MiniLM-L6-v2", backend="torch", precision="fp32", progress=False)
        import numpy as np

        np.save(work / "matrix.npy", torch_enc.encode(texts, progress=False))

        cold: dict[str, list[float]] = {s: [] for s in [*settings, "python -c pass", "naive script"]}
        for r in range(args.repeats):
            log(f"cold round {r + 1}/{args.repeats}")
            query = queries[r % len(queries)]
            cold["python -c pass"].append(wall([sys.executable, "-c", "pass"], dict(os.environ)))
            cold["naive script"].append(wall([sys.executable, "-c", NAIVE, str(info.path), str(work / "matrix.npy"), query],
                                             {**os.environ, "HF_HUB_OFFLINE": "1"}))
            for setting in settings:
                backend, precision = setting.split("/")
                store = stores[runs_as[setting][2]]
                cold[setting].append(wall([sys.executable, "-m", "retrieval", "search", query, "-k", "10"],
                                          env_for(store, backend, precision)))

        for setting in settings:
            log(f"warm query encoding: {setting}")
            out = subprocess.run([sys.executable, "-c", WARM, setting], input=json.dumps(queries[: args.queries]),
                                 env={**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
                                 capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            warm = json.loads(out.stdout.strip().splitlines()[-1])
            result["settings"][setting] = {"runs_as": " ".join(runs_as[setting][:2]), "model_key": runs_as[setting][2],
                                           "cold_search_seconds": stats(cold[setting]),
                                           "query_encoding_ms": {"p50": warm["p50"], "p99": warm["p99"], "runs": warm["runs"]}}
        result["baselines"] = {name: {"cold_seconds": stats(cold[name])} for name in ("python -c pass", "naive script")}

    from benchlib import machine

    result["machine"] = machine()
    result["command"] = "HF_HUB_OFFLINE=1 python scripts/bench_cold_search.py " + " ".join(sys.argv[1:])
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "cold_search.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    md = render(result)
    (out_dir / "cold_search.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


def render(result: dict[str, Any]) -> str:
    def f(s: dict[str, float]) -> str:
        return f"{s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f})"

    out = [
        f"Cold `retrieve search` at {result['docs']:,} documents: wall time of a fresh process, "
        f"median (min–max) of {result['repeats']}. Machine: {result['machine']}. Command: `{result['command']}`.",
        "",
        "| setting | runs as | cold search, s | warm query encoding p50 / p99, ms |",
        "|---|---|---|---|",
    ]
    for setting, row in result["settings"].items():
        q = row["query_encoding_ms"]
        out.append(f"| {setting} | {row['runs_as']} | {f(row['cold_search_seconds'])} | {q['p50']:.2f} / {q['p99']:.2f} |")
    for name, row in result["baselines"].items():
        out.append(f"| baseline: {name} | | {f(row['cold_seconds'])} | |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
