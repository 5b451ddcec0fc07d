"""`retrieve eval` and retrieval.evaluation: readers, metrics checked against pytrec_eval
(trec_eval itself), and the command on a small Cranfield sample."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.evaluation import (
    METRICS,
    EvalDataError,
    evaluate,
    evaluate_run,
    join_title,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
    query_metrics,
)
from tests.conftest import SHARED_DATA
from tests.fixtures.stores import write_jsonl

pytrec_eval = pytest.importorskip("pytrec_eval")

CRANFIELD = SHARED_DATA / "cranfield"
SAMPLE_DOCS = 40  # the first documents of Cranfield; 46 queries have judgements among them
JSON_KEYS = {"metrics", "queries", "depth", "mean_query_ms", "search_seconds", "documents", "model", "index_type",
             "exact_recall", "unjudged_queries", "missing_queries"}


# -- metrics against trec_eval ---------------------------------------------------------


def trec_eval_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, dict[str, float]]:
    """Our metric names computed by pytrec_eval; MRR@10 is recip_rank on the run cut at 10
    (trec_eval has no cut for it), cut in trec_eval's own order."""
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.10,100", "map"}).evaluate(run)
    cut = {q: dict(sorted(r.items(), key=lambda x: (x[1], x[0]), reverse=True)[:10]) for q, r in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    return {
        q: {"ndcg@10": m["ndcg_cut_10"], "recall@10": m["recall_10"], "recall@100": m["recall_100"],
            "mrr@10": rr[q]["recip_rank"], "map": m["map"]}
        for q, m in full.items()
    }


def random_case(rng: random.Random) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, int]]]:
    """Graded qrels (with 0 and negative judgements) and runs up to depth 150 with ties."""
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for q in range(12):
        qid = f"q{q}"
        pool = [f"d{i}" for i in range(rng.randint(5, 300))]
        judged = rng.sample(pool, min(len(pool), rng.randint(1, 40)))
        qrels[qid] = {d: rng.choice([-1, 0, 0, 1, 1, 2, 3, 4]) for d in judged}
        depth = min(len(pool), rng.randint(1, 150))
        # Coarse scores make many ties, which trec_eval breaks by document id.
        run[qid] = {d: rng.choice([round(rng.random(), 1), rng.random()]) for d in rng.sample(pool, depth)}
    return run, qrels


@pytest.mark.parametrize("seed", range(25))
def test_metrics_equal_trec_eval_on_random_runs(seed: int) -> None:
    run, qrels = random_case(random.Random(seed))
    means, per_query = evaluate_run(run, qrels)
    expected = trec_eval_metrics(run, qrels)
    assert set(expected) == set(per_query)
    for qid, values in expected.items():
        for name in METRICS:
            assert per_query[qid][name] == pytest.approx(values[name], abs=1e-12), (seed, qid, name)
    for name in METRICS:
        assert means[name] == pytest.approx(sum(v[name] for v in expected.values()) / len(expected), abs=1e-12)


def test_metrics_by_hand() -> None:
    judged = {"a": 3, "b": 1, "c": 2, "z": 0}
    run = {"x": 0.9, "b": 0.8, "a": 0.7}  # ranks: x (not judged), b, a
    m = query_metrics(run, judged)
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    idcg = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["recall@10"] == pytest.approx(2 / 3)
    assert m["mrr@10"] == pytest.approx(1 / 2)
    assert m["map"] == pytest.approx((1 / 2 + 2 / 3) / 3)


def test_query_without_relevant_documents_scores_zero_and_counts_in_the_mean() -> None:
    means, per_query = evaluate_run({"q1": {"a": 1.0}, "q2": {"a": 1.0}}, {"q1": {"a": 1}, "q2": {"a": 0}})
    assert per_query["q2"] == dict.fromkeys(METRICS, 0.0)
    assert means["ndcg@10"] == pytest.approx(0.5)


def test_judged_query_missing_from_the_run_scores_zero() -> None:
    means, per_query = evaluate_run({}, {"q1": {"a": 2}})
    assert per_query["q1"]["map"] == 0.0 and means["recall@100"] == 0.0


# -- readers ---------------------------------------------------------------------------


def test_corpus_joins_title_and_text_and_skips_empty_documents(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "1", "title": "Wing flutter", "text": "An experimental study."},
        {"_id": "2", "title": "", "text": "Only text."},
        {"_id": "3", "title": "Only title", "text": ""},
        {"_id": "4", "title": " ", "text": ""},
        {"_id": 5, "text": "Numeric id."},
    ])
    docs, empty = load_corpus(path)
    assert docs == {"1": "Wing flutter An experimental study.", "2": "Only text.", "3": "Only title", "5": "Numeric id."}
    assert empty == ["4"]
    assert join_title("", "") == ""


def test_qrels_beir_tsv_with_header_and_trec_format(tmp_path: Path) -> None:
    beir = tmp_path / "test.tsv"
    beir.write_text("query-id\tcorpus-id\tscore\n1\t184\t3\n1\t29\t0\n2\t7\t1\n", encoding="utf-8")
    assert load_qrels(beir) == {"1": {"184": 3, "29": 0}, "2": {"7": 1}}
    trec = tmp_path / "qrels.trec"
    trec.write_text("1 0 184 3\n2 0 7 1\n", encoding="utf-8")
    assert load_qrels(trec) == {"1": {"184": 3}, "2": {"7": 1}}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("query-id\tcorpus-id\tscore\n1\t2\tthree\n", ":2: the score 'three' is not a number"),
        ("query-id\tcorpus-id\tscore\n1\t2\n", ":2: expected query-id, corpus-id and score"),
        ("query-id\tcorpus-id\tscore\n", "holds no judgements"),
    ],
)
def test_bad_qrels_say_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "qrels.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(EvalDataError, match=message):
        load_qrels(path)


def test_bad_queries_say_where(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    path.write_text('{"_id": "1", "text": "lift"}\nnot json\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"queries.jsonl:2: not valid JSON"):
        load_queries(path)
    path.write_text('{"_id": "1", "text": "  "}\n', encoding="utf-8")
    with pytest.raises(EvalDataError, match="query '1' has no text"):
        load_queries(path)
    with pytest.raises(EvalDataError, match="does not exist"):
        load_queries(tmp_path / "absent.jsonl")


def test_missing_split_names_the_splits_found(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text("q\td\t1\n", encoding="utf-8")
    with pytest.raises(EvalDataError, match=r"splits found: dev; choose one with --split"):
        load_beir(tmp_path)


# -- the command on a Cranfield sample --------------------------------------------------


@pytest.fixture(scope="module")
def beir_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A BEIR folder: the first SAMPLE_DOCS Cranfield documents plus doc 471 (empty: it must
    be skipped), and the queries judged against those documents."""
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip("../shared/data/cranfield is absent")
    root = tmp_path_factory.mktemp("beir") / "cran-sample"
    (root / "qrels").mkdir(parents=True)
    keep: list[str] = []
    with open(CRANFIELD / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)
            if int(doc["_id"]) <= SAMPLE_DOCS or doc["_id"] == "471":
                keep.append(line)
    (root / "corpus.jsonl").write_text("".join(keep), encoding="utf-8")
    ids = {json.loads(line)["_id"] for line in keep}
    lines = (CRANFIELD / "qrels" / "test.tsv").read_text(encoding="utf-8").splitlines()
    judged = [line for line in lines[1:] if line.split("\t")[1] in ids]
    (root / "qrels" / "test.tsv").write_text("\n".join([lines[0], *judged]) + "\n", encoding="utf-8")
    qids = {line.split("\t")[0] for line in judged}
    queries = [line for line in (CRANFIELD / "queries.jsonl").read_text(encoding="utf-8").splitlines()
               if json.loads(line)["_id"] in qids]
    # One query without judgements: it is read but not evaluated.
    queries.append(json.dumps({"_id": "unjudged", "text": "boundary layer transition"}))
    (root / "queries.jsonl").write_text("\n".join(queries) + "\n", encoding="utf-8")
    return root


def invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


def test_eval_dataset_and_eval_on_an_ingested_store_agree(beir_sample: Path, real_store_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    from_dataset = json.loads(invoke(["eval", "--dataset", str(beir_sample), "--json", "--compare-exact"]).output)
    assert JSON_KEYS | {"dataset", "ingest_seconds", "skipped_documents"} <= set(from_dataset)
    assert from_dataset["dataset"] == "cran-sample"
    assert from_dataset["documents"] == SAMPLE_DOCS and from_dataset["skipped_documents"] == 1
    assert from_dataset["queries"] == 46 and from_dataset["unjudged_queries"] == 1
    assert from_dataset["exact_recall"] == 1.0  # flat is exact
    assert set(from_dataset["metrics"]) == set(METRICS)
    # Meaning finds Cranfield's judged abstracts among 40: far above chance.
    assert 0.4 < from_dataset["metrics"]["ndcg@10"] <= 1.0
    # Only 40 documents: every relevant one is within depth 100.
    assert from_dataset["metrics"]["recall@100"] == 1.0
    # --dataset never touches the configured store.
    assert not (tmp_path / "store" / "retrieval.db").exists()

    # The same documents ingested into the configured store with `retrieve ingest`.
    docs, _ = load_corpus(beir_sample / "corpus.jsonl")
    write_jsonl(tmp_path / "docs.jsonl", [{"id": k, "text": v} for k, v in docs.items()])
    invoke(["ingest", str(tmp_path / "docs.jsonl")])
    queries, qrels = str(beir_sample / "queries.jsonl"), str(beir_sample / "qrels" / "test.tsv")
    on_store = json.loads(invoke(["eval", "--queries", queries, "--qrels", qrels, "--json"]).output)
    assert set(on_store) >= JSON_KEYS and "dataset" not in on_store
    assert on_store["exact_recall"] is None
    for name in METRICS:
        assert on_store["metrics"][name] == pytest.approx(from_dataset["metrics"][name], abs=1e-6), name

    table = invoke(["eval", "--queries", queries, "--qrels", qrels, "-k", "10"]).output.splitlines()
    rows = {line.split()[0]: line for line in table}
    assert set(METRICS) | {"documents", "queries", "latency"} <= set(rows)
    assert f"{on_store['metrics']['ndcg@10']:.4f}" in rows["ndcg@10"]
    assert "depth 10" in rows["model"]
    # All rows align: the values start in one column.
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in table}
    assert len(starts) == 1


def test_compare_exact_on_a_forced_poor_hnsw_meets_the_recall_target(make_retriever: Any) -> None:
    """hash-384 vectors are isotropic, the worst case for HNSW, and a graph of degree 4
    searched with efSearch 1 is poor: the recall guard raises efSearch until the measured
    recall meets min_recall, or keeps the segment exact. Either way the queries' recall
    against exact search then meets the target."""
    if not (CRANFIELD / "corpus.jsonl").is_file():
        pytest.skip("../shared/data/cranfield is absent")
    data = load_beir(CRANFIELD)
    flat = make_retriever(index_type="flat")
    flat.ingest({"id": k, "text": v} for k, v in data.corpus.items())
    exact = evaluate(flat, data.queries, data.qrels, k=20, compare_exact=True)
    assert exact.exact_recall == 1.0 and exact.index_type == "flat"
    # The same store, rebuilt as forced HNSW from the stored vectors.
    hnsw = make_retriever(index_type="hnsw", hnsw_m=4, hnsw_ef_search=1)
    report = hnsw.reindex()
    assert report.embedded == 0
    (segment,) = hnsw.status()["segments"]
    # Every document is in the segment, some (longer than the model's window) as several passages.
    assert segment["passages"] >= len(data.corpus) and exact.documents == len(data.corpus)
    if segment["type"] == "hnsw":
        assert segment["recall"] >= 0.98 and segment["ef_search"] > 1
    else:
        assert segment["exact_by_guard"] is True
    result = evaluate(hnsw, data.queries, data.qrels, k=20, compare_exact=True)
    assert result.index_type == "hnsw" and result.depth == 20
    assert result.exact_recall is not None and result.exact_recall >= 0.98


def test_eval_usage_errors(store_env: dict[str, str], tmp_path: Path, beir_sample: Path) -> None:
    runner = CliRunner()
    neither = runner.invoke(cli, ["eval"])
    assert neither.exit_code == 2 and "--queries and --qrels" in neither.output
    both = runner.invoke(cli, ["eval", "--dataset", str(beir_sample), "--queries", "q.jsonl"])
    assert both.exit_code == 2 and "not both" in both.output
    empty = runner.invoke(cli, ["eval", "--queries", str(beir_sample / "queries.jsonl"),
                                "--qrels", str(beir_sample / "qrels" / "test.tsv")])
    assert empty.exit_code == 1 and "the store is empty" in empty.output
    missing = runner.invoke(cli, ["eval", "--dataset", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_eval_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0
    assert "retrieve eval --dataset" in result.output and "--compare-exact" in result.output
