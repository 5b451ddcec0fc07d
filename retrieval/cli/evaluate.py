"""`retrieve eval`: measure retrieval quality on judged queries."""

from __future__ import annotations

import click

from retrieval.cli.common import CliState, emit, pass_state, warn
from retrieval.config import SEARCH_MODES as MODES


def _modes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """--mode, repeatable and each a comma list, into the modes in order, without repeats."""
    modes: list[str] = []
    for value in values:
        for mode in (m.strip().lower() for m in value.split(",")):
            if not mode:
                continue
            if mode not in MODES:
                raise click.BadParameter(f"{mode!r} is not one of {', '.join(MODES)}", ctx, param)
            if mode not in modes:
                modes.append(mode)
    return tuple(modes) or ("dense",)


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
@click.option("--mode", "modes", multiple=True, callback=_modes, metavar="MODE[,MODE...]",
              help="Search mode to evaluate: dense (default), keyword (BM25) or hybrid (both, fused by "
                   "reciprocal rank). Repeat it or give a comma list to compare modes on one store.")
@click.option("--alpha", type=click.FloatRange(0, 1),
              help="Hybrid: weigh normalised dense scores by ALPHA and keyword ones by 1-ALPHA instead of RRF.")
@click.option("--compare-exact", is_flag=True,
              help="Also report recall@k of the configured index against exact search (1.0 for flat).")
@click.option("--run", "run_file", type=click.Path(dir_okay=False, writable=True),
              help="Also write the run in TREC format (qid Q0 docid rank score tag) for trec_eval; with several "
                   "modes, one file per mode, named with .MODE before the suffix (run.trec -> run.hybrid.trec).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_state
def eval_cmd(state: CliState, queries_path: str | None, qrels_path: str | None, dataset_dir: str | None,
             split: str, depth: int, modes: tuple[str, ...], alpha: float | None, compare_exact: bool,
             run_file: str | None, as_json: bool) -> None:
    """Measure retrieval quality: nDCG@10, Recall@10, Recall@100, MRR@10, MAP and latency.

    Evaluate the current store with judged queries whose qrels name the store's
    document ids, or evaluate a BEIR folder in a temporary store (the configured
    store is not touched; model and index settings still apply). With several
    --mode values, every mode is evaluated on the same store (a --dataset corpus is
    ingested once) and reported side by side.

    \b
        retrieve eval --queries queries.jsonl --qrels qrels/test.tsv
        retrieve eval --dataset ../shared/data/cranfield --json
        retrieve eval --dataset ../shared/data/cranfield --mode dense,keyword,hybrid
        retrieve --index-type hnsw eval --dataset ./scifact --compare-exact
    """
    from retrieval.evaluation import (
        evaluate_dataset_modes,
        evaluate_modes,
        format_table,
        load_qrels,
        load_queries,
        results_as_dict,
        run_path,
        write_run,
    )

    if alpha is not None and "hybrid" not in modes:
        raise click.UsageError("--alpha weighs hybrid mode's fusion; add --mode hybrid")
    if dataset_dir is not None:
        if queries_path or qrels_path:
            raise click.UsageError("give either --dataset or --queries with --qrels, not both")
        results = evaluate_dataset_modes(dataset_dir, state.settings, modes, alpha=alpha, k=depth,
                                         compare_exact=compare_exact, split=split)
    else:
        if not (queries_path and qrels_path):
            raise click.UsageError("give --queries and --qrels (for the current store), or --dataset DIR")
        from retrieval.retriever import Retriever

        queries, qrels = load_queries(queries_path), load_qrels(qrels_path)
        with Retriever.from_settings(state.settings) as retriever:
            results = evaluate_modes(retriever, queries, qrels, modes, k=depth, compare_exact=compare_exact,
                                     alpha=alpha)
    first = results[0]
    if first.missing_queries:
        warn(f"{first.missing_queries} judged query ids have no text in the queries file; they are left out")
    if run_file is not None:
        for result in results:
            write_run(run_path(run_file, result.mode, len(results) > 1), result.run, f"retrieve-{result.label}")
    emit(as_json, results_as_dict(results), lambda: format_table(results))


COMMANDS = [eval_cmd]
