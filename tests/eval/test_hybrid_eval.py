"""`retrieve eval --mode`: dense, keyword and hybrid search evaluated on one store.

The figures with the real packaged model are checked against pytrec_eval (trec_eval
itself) on Cranfield in tests/eval/test_cranfield.py, on the store that test embeds anyway;
the whole collection's figures and the issue's targets (hybrid nDCG@10 >= 0.41 on
Cranfield, >= 0.79 on Medline, above both parts) are asserted by scripts/eval_report.py,
since embedding all of Cranfield would take minutes of the suite on a slow CPU. The
plumbing (mode lists, JSON, table, runs, errors) is tested here with the hash-384 test
encoder on a small collection made here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.errors import RetrievalError
from retrieval.evaluation import METRICS, check_modes, evaluate_dataset, evaluate_modes, load_beir, load_qrels
from tests.fixtures.stores import write_jsonl

pytrec_eval = pytest.importorskip("pytrec_eval")

MODES = ["dense", "keyword", "hybrid"]
TREC_MEASURES = {"ndcg_cut.10", "recall.10,100", "map"}


def invoke(args: list[str]) -> Any:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return result


def trec_eval_means(run_file: Path, qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Our metric names (MRR@10 aside) as pytrec_eval computes them from a TREC run file,
    averaged over every judged query (one missing from the run scores 0, as in our means)."""
    with open(run_file, encoding="utf-8") as fh:
        run = pytrec_eval.parse_run(fh)
    per_query = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES).evaluate(run)
    names = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100", "map": "map"}
    return {ours: sum(m[theirs] for m in per_query.values()) / len(qrels) for ours, theirs in names.items()}


# -- the plumbing, with the test encoder ------------------------------------------------------


@pytest.fixture
def small_beir(tmp_path: Path) -> Path:
    """A BEIR folder: six documents, three judged queries and one without judgements."""
    root = tmp_path / "small"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", [
        {"_id": "d1", "title": "Boundary layers", "text": "Transition of the laminar boundary layer on a flat plate."},
        {"_id": "d2", "title": "Heat transfer", "text": "Heat transfer at hypersonic speeds in the stagnation region."},
        {"_id": "d3", "title": "Wing flutter", "text": "Flutter of swept wings at transonic speeds."},
        {"_id": "d4", "title": "Shock waves", "text": "Interaction of a shock wave with a turbulent boundary layer."},
        {"_id": "d5", "title": "Buckling", "text": "Buckling of thin cylindrical shells under axial compression."},
        {"_id": "d6", "title": "", "text": ""},  # empty: skipped
    ])
    write_jsonl(root / "queries.jsonl", [
        {"_id": "1", "text": "laminar boundary layer transition"},
        {"_id": "2", "text": "heat transfer in hypersonic flow"},
        {"_id": "3", "text": "the buckling of shells"},
        {"_id": "4", "text": "not judged"},
    ])
    (root / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n1\td1\t2\n1\td4\t1\n2\td2\t1\n3\td5\t3\n3\td3\t0\n", encoding="utf-8")
    return root


def test_default_is_dense_in_the_one_mode_shape(store_env: dict[str, str], small_beir: Path) -> None:
    out = json.loads(invoke(["eval", "--dataset", str(small_beir), "--json"]).output)
    assert out["mode"] == "dense" and "modes" not in out and "fusion" not in out
    assert set(out["metrics"]) == set(METRICS)
    assert out["documents"] == 5 and out["skipped_documents"] == 1
    assert out["queries"] == 3 and out["unjudged_queries"] == 1
    one = json.loads(invoke(["eval", "--dataset", str(small_beir), "--json", "--mode", "dense"]).output)
    assert one["metrics"] == out["metrics"] and "modes" not in one


def test_several_modes_on_one_store_json_table_and_runs(store_env: dict[str, str], small_beir: Path,
                                                        tmp_path: Path) -> None:
    runs = tmp_path / "runs" / "small.trec"
    runs.parent.mkdir()
    # Repeatable and comma lists, in the order given, repeats dropped.
    args = ["eval", "--dataset", str(small_beir), "--mode", "keyword", "--mode", "hybrid,dense,keyword",
            "--compare-exact"]
    out = json.loads(invoke([*args, "--json", "--run", str(runs)]).output)
    assert list(out["modes"]) == ["keyword", "hybrid", "dense"]
    assert out["mode"] == "keyword" and out["metrics"] == out["modes"]["keyword"]["metrics"]
    # Exact recall measures the dense index: none for keyword mode.
    assert [out["modes"][m]["exact_recall"] for m in ("keyword", "hybrid", "dense")] == [None, 1.0, 1.0]
    assert out["modes"]["hybrid"]["fusion"]["method"] == "rrf"
    assert sorted(p.name for p in runs.parent.iterdir()) == ["small.dense.trec", "small.hybrid.trec",
                                                             "small.keyword.trec"]
    qrels = load_qrels(small_beir / "qrels" / "test.tsv")
    for mode in ("keyword", "hybrid", "dense"):
        expected = trec_eval_means(runs.parent / f"small.{mode}.trec", qrels)
        for name, value in expected.items():
            assert out["modes"][mode]["metrics"][name] == pytest.approx(value, abs=1e-6), (mode, name)
    # Every word of query 1 is in d1 only: keyword mode puts it first.
    keyword_lines = (runs.parent / "small.keyword.trec").read_text().splitlines()
    assert keyword_lines[0].split()[:4] == ["1", "Q0", "d1", "1"]

    table = invoke(args).output.splitlines()
    rows = {name.strip(): value.split() for name, _, value in (line.partition("  ") for line in table)}
    assert rows["mode"] == ["keyword", "hybrid", "dense"]
    for name in METRICS:
        assert rows[name] == [f"{out['modes'][m]['metrics'][name]:.4f}" for m in ("keyword", "hybrid", "dense")]
    assert rows["recall@100 vs exact"] == ["-", "1.0000", "1.0000"]
    assert rows["latency"][-2:] == ["ms/query", "(batched)"]
    assert "reciprocal rank fusion (k=60)" in " ".join(rows["fusion"])
    # Every row's values start in one column.
    starts = {len(line) - len(line.split("  ", 1)[1].lstrip()) for line in table}
    assert len(starts) == 1


def test_one_mode_table_and_run(store_env: dict[str, str], small_beir: Path, tmp_path: Path) -> None:
    run = tmp_path / "hybrid.run"
    table = invoke(["eval", "--dataset", str(small_beir), "--mode", "hybrid", "--alpha", "0.25",
                    "--run", str(run)]).output.splitlines()
    rows = {line.split()[0]: line for line in table}
    assert "hybrid: alpha=0.25 x dense + 0.75 x keyword" in rows["mode"]
    assert set(METRICS) <= set(rows)
    assert run.is_file() and run.read_text().split()[5] == "retrieve-hybrid(alpha=0.25)"
    out = json.loads(invoke(["eval", "--dataset", str(small_beir), "--mode", "hybrid", "--alpha", "0.25",
                             "--json"]).output)
    assert out["mode"] == "hybrid" and out["fusion"] == {"method": "alpha", "alpha": 0.25, "depth": 100}
    assert f"{out['metrics']['ndcg@10']:.4f}" in rows["ndcg@10"]


def test_modes_on_the_current_store_agree_with_dataset(store_env: dict[str, str], small_beir: Path,
                                                       tmp_path: Path) -> None:
    from_dataset = json.loads(invoke(["eval", "--dataset", str(small_beir), "--mode", "dense,keyword,hybrid",
                                      "--json"]).output)
    data = load_beir(small_beir)
    write_jsonl(tmp_path / "docs.jsonl", [{"id": k, "text": v} for k, v in data.corpus.items()])
    invoke(["ingest", str(tmp_path / "docs.jsonl")])
    on_store = json.loads(invoke(["eval", "--queries", str(small_beir / "queries.jsonl"),
                                  "--qrels", str(small_beir / "qrels" / "test.tsv"),
                                  "--mode", "dense,keyword,hybrid", "--json"]).output)
    assert "dataset" not in on_store and list(on_store["modes"]) == MODES
    for mode in MODES:
        assert on_store["modes"][mode]["metrics"] == from_dataset["modes"][mode]["metrics"], mode


def test_library_records_the_mode(make_retriever: Any, small_beir: Path, tmp_path: Path) -> None:
    data = load_beir(small_beir)
    r = make_retriever()
    r.ingest({"id": k, "text": v} for k, v in data.corpus.items())
    results = evaluate_modes(r, data.queries, data.qrels, ["hybrid", "keyword"], alpha=0.5)
    assert [(x.mode, x.alpha, x.fusion_depth) for x in results] == [("hybrid", 0.5, 100), ("keyword", None, None)]
    assert set(results[1].run) == {"1", "2", "3"} and results[1].run["1"]
    from retrieval.config import load_settings

    settings = load_settings(overrides={"model": "hash-384", "progress": False}, environ={}, cwd=tmp_path)
    single = evaluate_dataset(small_beir, settings, mode="keyword", work_dir=tmp_path)
    assert single.mode == "keyword" and single.dataset == "small"
    assert single.metrics == results[1].metrics


@pytest.mark.parametrize(
    ("modes", "alpha", "message"),
    [
        (["sparse"], None, "unknown search mode 'sparse'"),
        ([], None, "no search mode given"),
        (["dense"], 0.5, "evaluate the hybrid mode to use it"),
        (["hybrid"], 1.5, "alpha must be between 0 and 1"),
    ],
)
def test_bad_modes_are_refused_before_anything_is_ingested(modes: list[str], alpha: float | None,
                                                           message: str) -> None:
    with pytest.raises(RetrievalError, match=message):
        check_modes(modes, alpha)


def test_cli_usage_errors(store_env: dict[str, str], small_beir: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(cli, ["eval", "--dataset", str(small_beir), "--mode", "dense,sparse"])
    assert unknown.exit_code == 2 and "'sparse' is not one of dense, keyword, hybrid" in unknown.output
    alpha = runner.invoke(cli, ["eval", "--dataset", str(small_beir), "--mode", "dense", "--alpha", "0.5"])
    assert alpha.exit_code == 2 and "add --mode hybrid" in alpha.output
    help_text = runner.invoke(cli, ["eval", "--help"]).output
    assert "--mode dense,keyword,hybrid" in help_text and "--run" in help_text
