"""The ingest/search benchmark runs end to end on a small sample and reports sane figures.

Only counts, agreement and shape are checked: speed belongs to the benchmark's own report,
never to an assertion.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import HASH, REPO

# The extended suite: run by .ci/run after the README's test command (pytest -m extended).
pytestmark = pytest.mark.extended

SCRIPT = REPO / "scripts" / "bench_ingest_search.py"
CATALOG = REPO.parent / "shared" / "data" / "catalog" / "catalog-100k.jsonl"
DOCS = 60  # enough for every figure (and for repeated texts); the benchmark's sizes are its own


@pytest.mark.slow
@pytest.mark.skipif(not CATALOG.is_file(), reason="the shared catalog data is not present")
def test_benchmark_reports_every_figure(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--docs", str(DOCS), "--repeats", "1", "--queries", "10"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must hold only the JSON line, got {proc.stdout[:500]!r}"
    r = json.loads(lines[0])

    assert set(r) >= {"docs", "distinct_texts", "encode", "ingest", "reingest", "reindex", "search", "cold_search",
                      "peak_rss_mib", "targets", "targets_met", "machine"}
    assert r["docs"] == DOCS
    rows = [json.loads(line) for line, _ in zip(CATALOG.open(encoding="utf-8"), range(DOCS))]
    distinct = len({row["text"] for row in rows})
    assert r["distinct_texts"] == distinct < DOCS  # the catalog repeats texts

    enc = r["encode"]
    assert enc["texts"] == DOCS
    assert enc["cosine_min"] >= (0.99999 if enc["encoder"].endswith("fp32") else 0.999) == enc["cosine_target"]
    assert enc["model_encode_docs_per_s"] > 0 and enc["encoder_docs_per_s"] > 0
    assert enc["speedup"] == pytest.approx(enc["model_encode_seconds"]["median"] / enc["encoder_seconds"]["median"], rel=1e-3)

    ing = r["ingest"]
    assert ing["added"] == DOCS
    assert ing["embedded"] == distinct  # identical texts embedded once
    assert 0 < ing["encoder_seconds"] < ing["seconds"]
    assert ing["overhead_seconds"] == pytest.approx(ing["seconds"] - ing["encoder_seconds"], abs=1e-3)

    again = r["reingest"]
    assert again["unchanged"] == DOCS
    assert again["added"] == again["updated"] == again["embedded"] == again["encoder_calls"] == 0

    rx = r["reindex"]
    assert rx["documents"] == DOCS
    assert rx["embedded"] == rx["encoder_calls"] == 0

    s = r["search"]
    assert s["index_size"] == DOCS and s["queries"] == 10 and s["min_hits"] == s["k"] == 10
    for kind in ("with_encoding_ms", "without_encoding_ms", "faiss_only_ms"):
        assert s[kind]["n"] == 10
        assert 0 < s[kind]["p50"] <= s[kind]["p99"]

    cold = r["cold_search"]
    assert cold["results"] == 10
    assert cold["seconds"]["median"] > 0
    assert r["peak_rss_mib"] > 50
    if sys.platform.startswith("linux"):
        assert cold["peak_rss_mib"] > 50
    assert set(r["targets_met"]) == {"encode_speedup", "identical_embeddings", "ingest_overhead", "reingest_speedup",
                                     "reindex_fraction", "search_p50"}
    assert r["targets_met"]["identical_embeddings"] is True


@pytest.mark.slow
@pytest.mark.skipif(not CATALOG.is_file(), reason="the shared catalog data is not present")
def test_benchmark_report_writes_tables_plots_and_merges_sizes(tmp_path: Path) -> None:
    """scripts/bench.py at toy sizes: report.md/json and both plots; --merge reruns one size
    and keeps the other's figures and the command that produced them. The report's
    plumbing is what is tested, so it runs on the test encoder (as storage benchmarks do)."""
    pytest.importorskip("matplotlib")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update(HF_HUB_OFFLINE="1", RETRIEVE_MODEL=HASH)
    out = tmp_path / "out"

    def run(*args: str) -> dict:
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--repeats", "1", "--queries", "10",
                               "--ef-search", "16,64", "--out", str(out), *args],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "report.json").read_text())

    first = run("--sizes", "40,60")
    assert [s["documents"] for s in first["sizes"]] == [40, 60]
    for size in first["sizes"]:
        systems = [(r["system"], r["ef_search"]) for r in size["search"]]
        assert systems == [("flat", None), ("naive numpy", None), ("hnsw", 16), ("hnsw", 64)]
        flat = size["search"][0]
        assert flat["recall_at_10"] == 1.0 and flat["search_ms"]["runs"] == 1
        assert size["ingest_docs_per_second"]["total"]["median"] > 0
        assert size["embedded_texts"] <= size["distinct_texts"] <= size["documents"]
    assert (out / "ingest_throughput.png").stat().st_size > 1000 and (out / "latency_recall.png").stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert "| 60 | flat | 1.0000 |" in md and first["encoder"] == "hash fp32" and first["encoder"] in md
    assert "RETRIEVE_MODEL=hash-384" in first["command"]

    second = run("--sizes", "60", "--merge")
    assert [s["documents"] for s in second["sizes"]] == [40, 60]
    assert second["sizes"][0] == first["sizes"][0]  # N=40 kept as measured
    assert [r["sizes"] for r in second["runs"]] == [[40], [60]]
    assert "--sizes 40,60" in second["runs"][0]["command"] and "--merge" in second["runs"][1]["command"]


@pytest.mark.skipif(not (CATALOG.parent / "catalog.jsonl").is_file(), reason="the shared catalog data is not present")
def test_postgres_ingest_benchmark_reports_both_databases(tmp_path: Path, postgres_admin_url: str) -> None:
    """scripts/bench_postgres.py --quick against the test server: every pass on both
    databases, with counts checked by the script itself and ratios in the JSON."""
    out = tmp_path / "postgres_ingest.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_postgres.py"), "--quick",
                           "--postgres-url", postgres_admin_url, "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == r
    assert set(r) >= {"machine", "documents", "distinct_texts", "batch", "vector_batch", "repeats", "postgresql", "sqlite",
                      "passes", "target_ratio", "target_met", "command"}
    assert r["documents"] == 2000 and r["repeats"] == 1 and 0 < r["distinct_texts"] <= 2000
    assert r["postgresql"]["server_version"] and r["postgresql"]["started_here"] is False
    assert set(r["passes"]) == {"ingest", "unchanged", "update", "vectors"}
    for row in r["passes"].values():
        assert row["sqlite"]["per_second"] > 0 and row["postgresql"]["per_second"] > 0
        assert row["ratio"] == pytest.approx(row["postgresql"]["per_second"] / row["sqlite"]["per_second"], rel=1e-3)
    assert r["target_met"] == (r["passes"]["ingest"]["ratio"] >= r["target_ratio"])
