"""Embedding long texts: passages/s and tokens/s of the default encoder, against the bare
runtime on the same passages, in one run.

Long documents come from the Medline abstracts in ``../shared/data/medline`` grouped 8 at
a time (paragraphs separated by a blank line), split into passages of at most the
model's window by :mod:`retrieval.embed.passages`. The same passages are then embedded:

* by the default encoder (``auto``: the backend and precision the store would use) with
  each token budget per batch (``--caps``; ``max_batch_tokens``), batch size 64;
* by plain sentence-transformers, ``model.encode(passages, batch_size=B)`` for B in 8 and
  32 (its default), the baseline every ratio is against (batch 32).

Medians of ``--repeats`` runs after a warm-up; the CPU model is printed with the table.

    HF_HUB_OFFLINE=1 python scripts/bench_passages.py
    HF_HUB_OFFLINE=1 python scripts/bench_passages.py --passages 256 --repeats 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
MEDLINE = REPO.parent / "shared" / "data" / "medline" / "corpus.jsonl"
sys.path.insert(0, str(REPO))

from benchlib import machine  # noqa: E402


def long_documents(per_doc: int = 8) -> list[str]:
    paragraphs = []
    with MEDLINE.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            paragraphs.append(" ".join(p for p in (row.get("title", ""), row.get("text", "")) if p))
    return ["\n\n".join(paragraphs[i : i + per_doc]) for i in range(0, len(paragraphs), per_doc)]


def timed(fn: Any, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=768, help="passages embedded per run")
    parser.add_argument("--caps", default="1024,2048,4096,8192,16384", help="max_batch_tokens values to try")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "bench" / "passages.json"))
    args = parser.parse_args()

    from retrieval.config import load_settings
    from retrieval.embed import create_encoder
    from retrieval.embed.factory import encoder_for
    from retrieval.embed.passages import split

    settings = load_settings()
    enc = encoder_for(settings)
    enc.progress = False
    enc.load()
    docs = long_documents()
    passages: list[str] = []
    for doc, spans in zip(docs, enc.token_spans(docs)):
        passages.extend(p.text(doc) for p in split(doc, spans, enc.window))
        if len(passages) >= args.passages:
            break
    passages = passages[: args.passages]
    tokens = sum(len(s) for s in enc.token_spans(passages)) + 2 * len(passages)
    torch_enc = create_encoder(settings.encoder.model, backend="torch", precision="fp32", progress=False)
    torch_enc.load()
    st_model = torch_enc._model  # plain SentenceTransformer: the bare runtime

    rows: list[dict[str, Any]] = []
    st_model.encode(passages[:32], batch_size=32)
    for batch in (32, 8):
        seconds = timed(lambda batch=batch: st_model.encode(passages, batch_size=batch), args.repeats)
        rows.append({"setting": f"sentence-transformers encode(batch_size={batch})", "seconds": seconds})
    enc.encode(passages[:64])
    for cap in (int(c) for c in args.caps.split(",")):
        enc.max_batch_tokens = cap
        seconds = timed(lambda: enc.encode(passages), args.repeats)
        rows.append({"setting": f"{enc.backend}/{enc.precision} max_batch_tokens={cap}", "seconds": seconds})
    base = rows[0]["seconds"]
    for row in rows:
        row.update(passages_per_s=round(len(passages) / row["seconds"], 1), tokens_per_s=round(tokens / row["seconds"]),
                   speedup=round(base / row["seconds"], 2), seconds=round(row["seconds"], 3))
    report = {"machine": machine(), "passages": len(passages), "mean_tokens": round(tokens / len(passages), 1),
              "window": enc.window, "repeats": args.repeats, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{machine()}; {len(passages)} passages of {report['mean_tokens']} tokens on average "
          f"(window {enc.window}), median of {args.repeats}")
    print("| setting | passages/s | tokens/s | vs sentence-transformers (batch 32) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['passages_per_s']} | {row['tokens_per_s']} | {row['speedup']}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
