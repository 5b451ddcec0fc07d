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
