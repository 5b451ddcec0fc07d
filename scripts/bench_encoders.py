"""Encoder throughput per backend and precision, against plain ``model.encode`` in the same run.

For each size (``--n``, default 5,000 and 20,000 catalog texts from
``<repo>/../shared/data/catalog/catalog-100k.jsonl``) every setting encodes the same texts
``--repeats`` times (median reported, after one warm-up batch); the baseline is
sentence-transformers' ``model.encode(texts, batch_size=64)`` measured in the same
process. Also reported: the fraction of the machine's ceiling (peak GOP/s of the
precision divided by the model's cost per text), and the cold-process time to load each
backend and encode one query (median of ``--cold-repeats`` fresh processes).

    HF_HUB_OFFLINE=1 python scripts/bench_encoders.py
    HF_HUB_OFFLINE=1 python scripts/bench_encoders.py --n 1000 --repeats 1   # quick look

Peaks default to the figures measured for the issue on the 2-core development machine
(541 GFLOP/s fp32, 1,087 bf16, 2,173 int8 GOP/s); pass ``--peak-*`` for another machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
SETTINGS = ("torch/fp32", "onnx/fp32", "onnx/int8", "openvino/fp32", "openvino/bf16")
FLOP_PER_TOKEN = 21.4e6  # all-MiniLM-L6-v2, forward pass


def load_texts(n: int) -> list[str]:
    texts = []
    with open(CATALOG, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == n:
                break
    return texts


def timed(fn: Any, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


COLD = """
import time; t = time.perf_counter()
from retrieval.embed import create_encoder
e = create_encoder({model!r}, backend={backend!r}, precision={precision!r}, progress=False)
e.encode_queries(["waterproof hiking boots"])
print(time.perf_counter() - t)
"""


def cold_seconds(model: str, setting: str, repeats: int) -> float:
    backend, precision = setting.split("/")
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", COLD.format(model=model, backend=backend, precision=precision)],
                       check=True, capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--n", type=int, action="append", help="texts per run (default: 5000 and 20000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--setting", action="append", help=f"backend/precision (default: {', '.join(SETTINGS)})")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--peak-fp32", type=float, default=541e9)
    parser.add_argument("--peak-bf16", type=float, default=1087e9)
    parser.add_argument("--peak-int8", type=float, default=2173e9)
    parser.add_argument("--out", default=str(REPO / "bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from retrieval.embed import create_encoder

    peaks = {"fp32": args.peak_fp32, "bf16": args.peak_bf16, "int8": args.peak_int8}
    settings = args.setting or list(SETTINGS)
    encoders = {s: create_encoder(args.model, backend=s.split("/")[0], precision=s.split("/")[1],
                                  threads=args.threads, progress=False) for s in settings}
    torch_enc = create_encoder(args.model, backend="torch", precision="fp32", progress=False)
    torch_enc.load()
    st_model = torch_enc._model  # the plain SentenceTransformer for the baseline
    results: list[dict[str, Any]] = []
    for n in args.n or [5000, 20000]:
        texts = load_texts(n)
        tokens = float(np.mean(torch_enc.token_counts(texts)))
        st_model.encode(texts[:64], batch_size=64)
        base = n / timed(lambda texts=texts: st_model.encode(texts, batch_size=64), args.repeats)
        results.append({"n": n, "setting": "model.encode (baseline)", "per_s": base, "speedup": 1.0,
                        "ceiling_fraction": base / (args.peak_fp32 / (FLOP_PER_TOKEN * tokens)), "tokens": tokens})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        reference = torch_enc.encode(texts[:1000], progress=False)
        for setting, enc in encoders.items():
            if getattr(enc, "fallback", None):
                results.append({"n": n, "setting": setting, "skipped": enc.fallback})
                continue
            enc.encode(texts[:64], progress=False)
            per_s = n / timed(lambda enc=enc, texts=texts: enc.encode(texts, progress=False), args.repeats)
            precision = setting.split("/")[1]
            ceiling = peaks[precision] / (FLOP_PER_TOKEN * tokens)
            # Agreement: top-10 neighbour overlap with torch fp32 on the first 1,000 texts.
            vecs = enc.encode(texts[:1000], progress=False)
            top_ref = np.argsort(-(reference @ reference.T), axis=1)[:, 1:11]
            top = np.argsort(-(vecs @ vecs.T), axis=1)[:, 1:11]
            overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top)]))
            results.append({"n": n, "setting": setting, "per_s": per_s, "speedup": per_s / base,
                            "ceiling_fraction": per_s / ceiling, "overlap": overlap, "tokens": tokens})
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    cold = {s: cold_seconds(args.model, s, args.cold_repeats) for s in settings if not getattr(encoders[s], "fallback", None)}

    lines = ["| texts | setting | sentences/s | vs model.encode | of ceiling | top-10 overlap |", "|---|---|---|---|---|---|"]
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['setting']} | – | – | – | not run: {r['skipped']} |")
            continue
        lines.append(f"| {r['n']} | {r['setting']} | {r['per_s']:.0f} | {r['speedup']:.1f}x | "
                     f"{r['ceiling_fraction']:.0%} | {r.get('overlap', 1.0):.3f} |")
    lines += ["", "| setting | cold process: load + encode one query (s) |", "|---|---|"]
    lines += [f"| {s} | {t:.2f} |" for s, t in cold.items()]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_encoders.md").write_text(table)
    (out / "bench_encoders.json").write_text(json.dumps({"results": results, "cold_seconds": cold}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
