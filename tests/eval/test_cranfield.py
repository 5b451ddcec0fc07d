"""On the real Cranfield collection, `retrieve` returns exactly what brute force returns,
and `retrieve eval` reports every search mode as trec_eval computes it.

All 225 queries over 500 of its documents (the 500 shortest: exactness does not depend
on length, and embedding is most of the test's time on a slow CPU), with the real
packaged model. The brute force scores the store's own vectors, which a sample of fresh
encodings confirms are the embeddings of the texts, so no document is embedded twice.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SHARED_DATA

CRANFIELD = SHARED_DATA / "cranfield"
pytestmark = pytest.mark.skipif(not (CRANFIELD / "corpus.jsonl").is_file(), reason="../shared/data/cranfield is absent")

DOCS = 500
FIELDS = ["--id-field", "_id", "--text-field", "title", "--text-field", "text"]


def test_cranfield_top10_equals_brute_force(real_store_env: dict[str, str], tmp_path: Path, encoder: Any) -> None:
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever
    from retrieval.store.records import content_hash

    runner = CliRunner()
    corpus_file = CRANFIELD / "corpus.jsonl"
    refused = runner.invoke(cli, ["ingest", *FIELDS, str(corpus_file)])
    assert refused.exit_code == 1
    assert f"{corpus_file}:471: empty text" in refused.output
    assert f"{corpus_file}:995: empty text" in refused.output
    assert "nothing was written" in refused.output
    status = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert status["documents"] == 0 and status["stored_vectors"] == 0

    # The sample: the shortest documents, in corpus order, and the empty one (skipped).
    lines = corpus_file.read_text(encoding="utf-8").splitlines(keepends=True)
    rows = [json.loads(line) for line in lines]
    text_of = [" ".join(p.strip() for p in (d["title"], d["text"]) if p.strip()) for d in rows]
    shortest = set(sorted((i for i, t in enumerate(text_of) if t), key=lambda i: (len(text_of[i]), i))[:DOCS])
    chosen = [i for i in range(len(rows)) if i in shortest or i == 470]
    sample = tmp_path / "corpus.jsonl"
    sample.write_text("".join(lines[i] for i in chosen), encoding="utf-8")
    stored = runner.invoke(cli, ["ingest", *FIELDS, str(sample), "--skip-invalid"])
    assert stored.exit_code == 0, stored.output
    assert f"{DOCS} added, 0 updated, 0 unchanged, 1 invalid" in stored.output
    assert f"skipped {sample}:{chosen.index(470) + 1}: empty text" in stored.output

    texts = [text_of[i] for i in chosen if text_of[i]]
    ids = [rows[i]["_id"] for i in chosen if text_of[i]]
    assert len(ids) == DOCS
    with Retriever.from_settings(load_settings()) as r, r.store.read() as snap:
        by_hash = snap.embeddings(encoder.model_key, [content_hash(t) for t in texts])
    doc_vecs = np.stack([by_hash[content_hash(t)] for t in texts])
    # The stored vectors are the model's embeddings of these texts (checked on a sample).
    picks = np.random.default_rng(0).choice(len(texts), 12, replace=False)
    fresh = encoder.encode([texts[i] for i in picks])
    assert np.min(np.sum(fresh * doc_vecs[picks], axis=1)) > 0.9999

    queries = [json.loads(line) for line in (CRANFIELD / "queries.jsonl").read_text().splitlines()]
    assert len(queries) == 225
    query_vecs = encoder.encode_queries([q["text"] for q in queries])
    scores = query_vecs @ doc_vecs.T

    qfile = tmp_path / "queries.jsonl"
    qfile.write_text("".join(json.dumps({"id": q["_id"], "text": q["text"]}) + "\n" for q in queries))
    result = runner.invoke(cli, ["search", "--queries", str(qfile), "-k", "10"])
    assert result.exit_code == 0, result.output
    out = [json.loads(line) for line in result.output.splitlines()]
    assert [line["query_id"] for line in out] == [q["_id"] for q in queries]

    mismatches = 0
    for qi, line in enumerate(out):
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

    # Every search mode on the same store: `retrieve eval` reports what trec_eval computes
    # from the runs it writes, and fusing the two rankings beats the keyword one alone.
    # (The whole collection's figures, with the targets, are asserted by
    # scripts/eval_report.py: embedding it all would cost minutes on a slow CPU.)
    from retrieval.evaluation import load_qrels
    from tests.eval.test_hybrid_eval import trec_eval_means

    runs = tmp_path / "sample.trec"
    ev = runner.invoke(cli, ["eval", "--queries", str(qfile), "--qrels", str(CRANFIELD / "qrels" / "test.tsv"),
                             "--mode", "dense,keyword,hybrid", "--json", "--run", str(runs)])
    assert ev.exit_code == 0, ev.output
    reported = json.loads(ev.output)["modes"]
    qrels = load_qrels(CRANFIELD / "qrels" / "test.tsv")
    ndcg = {}
    for mode in ("dense", "keyword", "hybrid"):
        expected = trec_eval_means(tmp_path / f"sample.{mode}.trec", qrels)
        for name, value in expected.items():
            assert reported[mode]["metrics"][name] == pytest.approx(value, abs=1e-6), (mode, name)
        ndcg[mode] = expected["ndcg@10"]
    assert ndcg["hybrid"] > ndcg["keyword"] and ndcg["hybrid"] > ndcg["dense"] - 0.01, ndcg
