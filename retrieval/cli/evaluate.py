"""`retrieve eval`: measure retrieval quality on judged queries."""

from __future__ import annotations

import click

from retrieval.cli.common import CliState, emit, pass_state, warn


@click.command("eval")
@click.option("--queries", "queries_path", type=click.Path(dir_okay=False),
              help="Queries file (BEIR queries.jsonl: one {\"_id\", \"text\"} per line).")
@click.option("--qrels", "qrels_path", type=click.Path(dir_okay=False),
              help="Relevance judgements (BEIR TSV: query-id, corpus-id, score; or TREC qrels).")
@click.option("--dataset", "dataset_dir", type=click.Path(file_okay=False),
              help="BEIR folder: its corpus is ingested into a temporary store and evaluated there.")
@click.option("--split", default="test", show_default=True, help="With --dataset: which qrels/<split>.tsv to use.")
@click.option("-k", "--depth", default=100, show_default=True, type=click.IntRange(min=1),
              help="Documents retrieved per query (MAP is computed over this depth).")
@click.option("--compare-exact", is_flag=True,
              help="Also report recall@k of the configured index against exact search (1.0 for flat).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def eval_cmd(state: CliState, queries_path: str | None, qrels_path: str | None, dataset_dir: str | None,
             split: str, depth: int, compare_exact: bool, as_json: bool) -> None:
    """Measure retrieval quality: nDCG@10, Recall@10, Recall@100, MRR@10, MAP and latency.

    Evaluate the current store with judged queries whose qrels name the store's
    document ids, or evaluate a BEIR folder in a temporary store (the configured
    store is not touched; model and index settings still apply).

    \b
        retrieve eval --queries queries.jsonl --qrels qrels/test.tsv
        retrieve eval --dataset ../shared/data/cranfield --json
        retrieve --index-type hnsw eval --dataset ./scifact --compare-exact
    """
    from retrieval.evaluation import evaluate, evaluate_dataset, format_table, load_qrels, load_queries

    if dataset_dir is not None:
        if queries_path or qrels_path:
            raise click.UsageError("give either --dataset or --queries with --qrels, not both")
        result = evaluate_dataset(dataset_dir, state.settings, k=depth, compare_exact=compare_exact, split=split)
    else:
        if not (queries_path and qrels_path):
            raise click.UsageError("give --queries and --qrels (for the current store), or --dataset DIR")
        from retrieval.retriever import Retriever

        queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
        with Retriever.from_settings(state.settings) as retriever:
            result = evaluate(retriever, queries, qrels, k=depth, compare_exact=compare_exact)
    if result.missing_queries:
        warn(f"{result.missing_queries} judged query ids have no text in the queries file; they are left out")
    emit(as_json, result.as_dict(), lambda: format_table(result))


COMMANDS = [eval_cmd]
