"""Helpers the benchmark and report scripts share (imported as ``benchlib``: a script's own
folder is first on ``sys.path`` when it runs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """One line naming the machine a figure came from: cores, CPU model, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu}), no GPU, Python {platform.python_version()}"


def catalog_documents(path: Path, n: int) -> list:
    """The first ``n`` rows of a catalog JSONL file as ``NewDocument``s (as `retrieve
    ingest` stores them); exits with a message when the file holds fewer."""
    import json

    from retrieval.store.records import NewDocument

    docs = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if len(docs) >= n:
                break
            row = json.loads(line)
            docs.append(NewDocument(str(row["id"]), row["text"], row.get("metadata") or {}))
    if len(docs) < n:
        raise SystemExit(f"{path} holds {len(docs)} rows, fewer than the {n} asked for")
    return docs


def med(xs: list[float]) -> float:
    """The median, or NaN of nothing."""
    import statistics

    return float(statistics.median(xs)) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    """The ``q``-th percentile, or NaN of nothing."""
    import numpy as np

    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def timed(fn, qv, warmup: int = 50) -> tuple[list[float], list]:  # type: ignore[no-untyped-def]
    """``fn`` called on each query row of ``qv`` alone, after ``warmup`` untimed calls:
    (seconds of each call, each call's result)."""
    import time

    for i in range(min(warmup, len(qv))):
        fn(qv[i:i + 1])
    times, results = [], []
    for i in range(len(qv)):
        t0 = time.perf_counter()
        res = fn(qv[i:i + 1])
        times.append(time.perf_counter() - t0)
        results.append(res)
    return times, results


def recall_at(found_scores, kth) -> float:  # type: ignore[no-untyped-def]
    """recall@k of found scores against each query's exact k-th score (ties count as found)."""
    return float((found_scores >= kth[:, None] - 1e-5).sum() / found_scores.size)

