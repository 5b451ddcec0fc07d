"""Quality gate for encoder backends and precisions, against torch fp32.

Every setting embeds the same data and is scored the same way:

* nDCG@10 on cranfield and medline (BEIR folders in ``<repo>/../shared/data``): corpus
  embedded as ``title + " " + text``, exact cosine search with numpy, trec_eval's
  nDCG@10 with graded gains (``retrieval.evaluation``);
* Spearman correlation between cosine and the gold score on the STS-B test pairs.

A setting that loses more than ``--tolerance`` (0.002) on any of them against torch fp32
fails. Writes ``bench/quality_gate.md`` and ``bench/quality_gate.json``.

    HF_HUB_OFFLINE=1 python scripts/quality_gate.py
    HF_HUB_OFFLINE=1 python scripts/quality_gate.py --setting onnx/fp32 --setting onnx/int8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SETTINGS = ("torch/fp32", "onnx/fp32", "onnx/int8", "openvino/fp32", "openvino/bf16")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho: Pearson correlation of ranks (ties get their mean rank)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), dtype=np.float64)
        r[order] = np.arange(len(x), dtype=np.float64)
        # average ranks of ties
        _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        sums = np.bincount(inverse, weights=r)
        return np.asarray(sums[inverse] / counts[inverse])

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def load_sts(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    left, right, gold = [], [], []
    with open(path, encoding="utf-8") as f:
        next(f)  # header: score, sentence1, sentence2
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            gold.append(float(parts[0]))
            left.append(parts[1])
            right.append(parts[2])
    return left, right, np.array(gold)


def ndcg_at_10(encoder: Any, folder: Path) -> float:
    from retrieval.evaluation import evaluate_run, load_beir

    ds = load_beir(folder)
    doc_ids = list(ds.corpus)
    docs = encoder.encode([ds.corpus[d] for d in doc_ids], progress=False)
    qids = [q for q in ds.queries if q in ds.qrels]
    queries = encoder.encode_queries([ds.queries[q] for q in qids])
    scores = queries @ docs.T
    run: dict[str, dict[str, float]] = {}
    for row, qid in enumerate(qids):
        top = np.argpartition(-scores[row], 100)[:100]
        run[qid] = {doc_ids[i]: float(scores[row, i]) for i in top}
    means, _ = evaluate_run(run, ds.qrels)
    return float(means["ndcg@10"])


def sts_spearman(encoder: Any, path: Path) -> float:
    left, right, gold = load_sts(path)
    a = encoder.encode(left, progress=False)
    b = encoder.encode(right, progress=False)
    return spearman((a * b).sum(axis=1), gold)


def measure(setting: str, model: str, threads: int | None) -> dict[str, Any]:
    from retrieval.embed import create_encoder

    backend, precision = setting.split("/")
    enc = create_encoder(model, backend=backend, precision=precision, threads=threads, progress=False)
    fallback = getattr(enc, "fallback", None)
    if fallback:
        return {"setting": setting, "skipped": fallback}
    started = time.perf_counter()
    result = {
        "setting": setting,
        "model_key": enc.model_key,
        "cranfield": ndcg_at_10(enc, DATA / "cranfield"),
        "medline": ndcg_at_10(enc, DATA / "medline"),
        "stsb": sts_spearman(enc, DATA / "stsb" / "sts-test.tsv"),
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--setting", action="append", help=f"backend/precision (default: all of {', '.join(SETTINGS)})")
    parser.add_argument("--tolerance", type=float, default=0.002)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default=str(REPO / "bench"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = ["torch/fp32"] + [s for s in (args.setting or SETTINGS) if s != "torch/fp32"]

    rows = []
    for setting in settings:
        row = measure(setting, args.model, args.threads)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    base = rows[0]
    metrics = ("cranfield", "medline", "stsb")
    for row in rows:
        if "skipped" in row:
            row["passes"] = None
            continue
        row["delta"] = {m: row[m] - base[m] for m in metrics}
        row["passes"] = all(d >= -args.tolerance for d in row["delta"].values())

    lines = [
        f"Quality gate: {args.model}, each setting against torch fp32; fails when any metric drops by more "
        f"than {args.tolerance} ({platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}).",
        "",
        "| setting | cranfield nDCG@10 | medline nDCG@10 | stsb Spearman | gate |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        if row["passes"] is None:
            lines.append(f"| {row['setting']} | – | – | – | not run: {row['skipped']} |")
            continue
        cells = [f"{row[m]:.4f} ({row['delta'][m]:+.4f})" for m in metrics]
        lines.append(f"| {row['setting']} | {' | '.join(cells)} | {'pass' if row['passes'] else 'FAIL'} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality_gate.md").write_text(table)
    (out / "quality_gate.json").write_text(json.dumps({"model": args.model, "tolerance": args.tolerance,
                                                        "rows": rows}, indent=2))
    return 0 if all(r["passes"] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
