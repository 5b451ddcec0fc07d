"""Peak memory of `retrieve ingest` as the input file grows ten times.

A file of N documents of about 50 KB each is ingested by `retrieve ingest` in a fresh
process into a fresh store, for N small and N ten times larger; the peak resident set
size (RSS) and peak anonymous memory (the heap, without the database pages SQLite maps)
of the process are read from /proc. An ingest that held the file, or all of its texts,
in memory would grow with it; one that streams holds a batch of texts, plus the vectors
(1.5 KB a document), which every index holds anyway. The encoder is the test encoder (``hash-384``, batch size 8), so that
embedding time and model memory stay out of the figure.

    python scripts/bench_ingest_memory.py [--docs 200] [--repeats 3]

Prints the machine, each run and the medians, and writes ``bench/ingest_memory.json``.
Run it against another checkout (``--repo``) to compare versions in one go.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import machine

HERE = Path(__file__).resolve().parent
WORDS = ("river mountain cotton shirt running shoes lamp ceramic teapot kayak paddle tent frame aluminium "
         "waterproof linen wool scarf bicycle chain garden soil seed harvest library novel chapter").split()
def write_corpus(path: Path, docs: int, size: int, seed: int) -> int:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(docs):
            words: list[str] = []
            length = 0
            while length < size:
                w = rng.choice(WORDS) + str(rng.randrange(1000))
                words.append(w)
                length += len(w) + 1
            fh.write(json.dumps({"id": f"d{i}", "text": " ".join(words), "metadata": {"n": i}}) + "\n")
    return path.stat().st_size


def _status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon"):
            out[key] = int(value.split()[0])  # KiB
    return out


def peak_memory_mib(python: str, corpus: Path, work: Path) -> tuple[float, float]:
    """(peak anonymous memory, peak RSS) of one `retrieve ingest` process, in MiB. RSS also
    counts the database and index files the process maps (SQLite reads through a memory
    map): clean file pages the kernel takes back at will. Anonymous memory is the heap:
    what the process itself holds. It is sampled every 5 ms; VmHWM is the kernel's own peak."""
    store = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update(RETRIEVE_DATABASE_URL=f"sqlite:///{store / 'retrieval.db'}", RETRIEVE_INDEX_DIR=str(store / "index"),
               RETRIEVE_MODEL="hash-384", RETRIEVE_BATCH_SIZE="8", RETRIEVE_PROGRESS="false", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([python, "-m", "retrieval.cli", "ingest", str(corpus)], env=env, cwd=store,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    anon = hwm = 0
    while proc.poll() is None:
        try:
            now = _status(proc.pid)
        except (OSError, ValueError):
            break
        anon, hwm = max(anon, now.get("RssAnon", 0)), max(hwm, now.get("VmHWM", 0))
        time.sleep(0.005)
    _, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"retrieve ingest failed: {err}")
    return anon / 1024, hwm / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200, help="documents in the small file (the large has 10x)")
    parser.add_argument("--size", type=int, default=50_000, help="characters per document")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose retrieval is measured")
    parser.add_argument("--out", default=str(HERE.parent / "bench" / "ingest_memory.json"))
    args = parser.parse_args()
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        files = {}
        for label, n in (("small", args.docs), ("large", args.docs * 10)):
            files[label] = (work / f"{label}.jsonl", n)
            mib = write_corpus(files[label][0], n, args.size, seed=n) / 2**20
            print(f"{label}: {n} documents, {mib:.0f} MiB", flush=True)
        anon: dict[str, list[float]] = {"small": [], "large": []}
        rss: dict[str, list[float]] = {"small": [], "large": []}
        for r in range(args.repeats):
            for label in ("small", "large"):  # interleaved, so that drift hits both alike
                a, h = peak_memory_mib(args.python, files[label][0], work)
                anon[label].append(a)
                rss[label].append(h)
                print(f"  run {r + 1} {label}: peak anonymous {a:.0f} MiB, peak RSS {h:.0f} MiB", flush=True)
        sizes = {label: files[label][0].stat().st_size / 2**20 for label in files}
    med_anon = {label: statistics.median(v) for label, v in anon.items()}
    med_rss = {label: statistics.median(v) for label, v in rss.items()}
    result = {
        "machine": machine(),
        "documents": {label: n for label, (_, n) in files.items()},
        "file_mib": {k: round(v, 1) for k, v in sizes.items()},
        "peak_anonymous_mib": {k: [round(x, 1) for x in v] for k, v in anon.items()},
        "peak_rss_mib": {k: [round(x, 1) for x in v] for k, v in rss.items()},
        "median_peak_anonymous_mib": {k: round(v, 1) for k, v in med_anon.items()},
        "median_peak_rss_mib": {k: round(v, 1) for k, v in med_rss.items()},
        "file_ratio": round(sizes["large"] / sizes["small"], 2),
        "anonymous_ratio_large_to_small": round(med_anon["large"] / med_anon["small"], 2),
        "extra_anonymous_mib_per_file_mib": round((med_anon["large"] - med_anon["small"])
                                                  / (sizes["large"] - sizes["small"]), 3),
        "extra_rss_mib_per_file_mib": round((med_rss["large"] - med_rss["small"]) / (sizes["large"] - sizes["small"]), 3),
    }
    print(json.dumps(result, indent=1))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
