"""On the real Cranfield collection, `retrieve` returns exactly what brute force returns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import SHARED_DATA
from retrieval.cli import cli

CRANFIELD = SHARED_DATA / "cranfield"
pytestmark = pytest.mark.skipif(not (CRANFIELD / "corpus.jsonl").is_file(), reason="../shared/data/cranfield is absent")

INGEST = ["ingest", "--id-field", "_id", "--text-field", "title", "--text-field", "text", str(CRANFIELD / "corpus.jsonl")]


def test_cranfield_top10_equals_brute_force(store_env, tmp_path: Path, encoder) -> None:
    runner = CliRunner()
    refused = runner.invoke(cli, INGEST)
    assert refused.exit_code == 1
    assert f"{CRANFIELD / 'corpus.jsonl'}:471: empty text" in refused.output
    assert f"{CRANFIELD / 'corpus.jsonl'}:995: empty text" in refused.output
    assert "nothing was written" in refused.output
    status = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert status["documents"] == 0 and status["stored_vectors"] == 0

    stored = runner.invoke(cli, [*INGEST, "--skip-invalid"])
    assert stored.exit_code == 0, stored.output
    assert "1398 added, 0 updated, 0 unchanged, 2 invalid" in stored.output

    corpus = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").read_text().splitlines()]
    corpus = [d for d in corpus if (d["title"] + d["text"]).strip()]
    texts = [" ".join(p.strip() for p in (d["title"], d["text"]) if p.strip()) for d in corpus]
    ids = [d["_id"] for d in corpus]
    doc_vecs = encoder.encode(texts)
    queries = [json.loads(line) for line in (CRANFIELD / "queries.jsonl").read_text().splitlines()]
    assert len(queries) == 225
    query_vecs = encoder.encode_queries([q["text"] for q in queries])
    scores = query_vecs @ doc_vecs.T

    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps({"id": q["_id"], "text": q["text"]}) + "\n" for q in queries))
    result = runner.invoke(cli, ["search", "--queries", str(qfile), "-k", "10"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["query_id"] for line in lines] == [q["_id"] for q in queries]

    mismatches = 0
    for qi, line in enumerate(lines):
        got = [(r["id"], r["score"]) for r in line["results"]]
        order = np.argsort(-scores[qi], kind="stable")[:10]
        expected = [(ids[j], float(scores[qi, j])) for j in order]
        assert len(got) == 10
        for (gid, gscore), (eid, escore) in zip(got, expected):
            assert abs(gscore - escore) < 1e-4
            if gid != eid:
                # Only a tie (equal scores) may swap two documents.
                mismatches += 1
                assert abs(gscore - escore) < 1e-6
    assert mismatches <= 2
