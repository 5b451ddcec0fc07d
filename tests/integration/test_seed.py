"""The motivating example from the README, through the library, the CLI and a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import REAL, REPO, SEED
from tests.fixtures.stores import write_jsonl

QUERIES = {
    "What are good shoes for jogging?": (1, 0.6649),
    "I need a shirt made of natural fabric.": (0, 0.5874),
}


def test_seed_example_python_api(make_retriever, encoder) -> None:
    r = make_retriever(model=REAL)
    report = r.ingest([{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert (report.added, report.updated, report.unchanged) == (4, 0, 0)
    for query, (best, score) in QUERIES.items():
        hits = r.search(query, k=4)
        assert hits[0].id == f"d{best}"
        assert hits[0].text == SEED[best]
        assert abs(hits[0].score - score) < 0.001
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_seed_example_cli(real_store_env, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t, "kind": "clothes"} for i, t in enumerate(SEED)])
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest", str(data)])
    assert result.exit_code == 0, result.output
    assert "4 added, 0 updated, 0 unchanged, 0 invalid" in result.output
    for query, (best, score) in QUERIES.items():
        result = runner.invoke(cli, ["search", query, "--json"])
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        top = out["results"][0]
        assert top["id"] == f"d{best}" and top["text"] == SEED[best]
        assert top["metadata"] == {"kind": "clothes"}
        assert abs(top["score"] - score) < 0.001
    human = runner.invoke(cli, ["search", "What are good shoes for jogging?", "-k", "2"])
    assert human.exit_code == 0
    rank, shown, doc = human.output.splitlines()[0].split()[:3]
    # Four decimals, as printed; the last one may differ by CPU and runtime (fp32 0.6649).
    assert (rank, doc) == ("1.", "d1") and len(shown.split(".")[1]) == 4 and abs(float(shown) - 0.6649) < 0.001


def test_sample_catalog_demo_in_a_real_process(tmp_path: Path, encoder) -> None:
    """What the README's demo command does, as a subprocess with the installed console script."""
    sample = REPO / "retrieval" / "sample" / "products.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RETRIEVE_PROGRESS": "false"}
    base = [sys.executable, "-m", "retrieval"]
    run = lambda *args: subprocess.run([*base, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    ingest = run("ingest", str(sample))
    assert ingest.returncode == 0, ingest.stderr
    assert "50 added" in ingest.stdout
    search = run("search", "--json", "-k", "3", "What are good shoes for jogging?")
    assert search.returncode == 0, search.stderr
    top = json.loads(search.stdout)["results"][0]
    assert top["id"] == "p002" and abs(top["score"] - 0.6649) < 0.001
    assert (tmp_path / "data" / "retrieval.db").is_file()
    assert (tmp_path / "data" / "index" / "CURRENT").is_file()
