"""Keeping the index in step with the database: `retrieve sync`, `reindex`, `verify`
and `compact`."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any

import click

from retrieval.cli.common import emit, json_option, pass_retriever, size

if TYPE_CHECKING:
    from retrieval.retriever import Retriever


@click.command()
@json_option
@pass_retriever
def sync(retriever: Retriever, as_json: bool) -> None:
    """Apply pending database changes to the index (embedding what is new).

    \b
        retrieve sync
    """
    report = retriever.sync()

    def lines() -> list[str]:
        if report.full:
            return [f"Built the index from scratch: {report.added} documents ({report.passages} passages; "
                    f"{report.long_documents} longer than the model's window), {report.embedded} embedded, "
                    f"version {report.version}"]
        if report.changes == 0:
            return [f"Up to date (version {report.version})."]
        return [f"{report.changes} changed documents applied ({report.embedded} embedded, {report.added} indexed, "
                f"{report.removed} removed) in {report.seconds:.2f}s; version {report.version}"]

    emit(as_json, report.as_dict(), lines)


@click.command()
@json_option
@pass_retriever
def verify(retriever: Retriever, as_json: bool) -> None:
    """Check that the index agrees exactly with the database (exit 1 on drift).

    \b
        retrieve verify
    """
    report = retriever.verify()
    state = "OK" if report.ok else f"DRIFT: {len(report.problems)} differences"
    emit(as_json, report.as_dict(), lambda: [
        *report.problems,
        f"{state}: {report.documents} documents, {report.indexed} indexed, {report.pending} pending changes",
    ])
    if not report.ok:
        sys.exit(1)


@click.command()
@click.option("--model", "new_model", help="Re-embed everything with this model, then switch to it.")
@click.option("--if-needed", is_flag=True,
              help="Rebuild only when worth it (model or index type changed, index damaged); say why or why not.")
@json_option
@pass_retriever
def reindex(retriever: Retriever, new_model: str | None, if_needed: bool, as_json: bool) -> None:
    """Rebuild the index from stored embeddings (nothing is re-embedded).

    With --model, every document is embedded with the new model into a new index; the
    old index keeps answering searches until the new one is complete. With --if-needed
    (for schedules), it rebuilds only when that is worth it, and says why or why not;
    otherwise it runs the segment merges the merge policy asks for.

    \b
        retrieve reindex
        retrieve reindex --if-needed
        retrieve reindex --model ./models/other-model
    """
    if if_needed:
        if new_model:
            raise click.UsageError("--if-needed and --model do not go together")
        from retrieval.sync.maintenance import reindex_needed

        decision = reindex_needed(retriever)
        if not decision.needed:
            pending = retriever.pending_merges()
            merges = retriever.merge() if pending else []
            done = [m.as_dict() for m in merges]
            emit(as_json, {"reindexed": False, "reason": decision.reason, "merges": done},
                 lambda: [f"No reindex needed: {decision.reason}.", *_merge_lines(done)])
            return
        click.echo(f"Reindexing: {decision.reason}.", err=as_json)
    t0 = time.perf_counter()
    report = retriever.reindex(new_model)

    def lines() -> list[str]:
        out = [f"Reindexed {report.added} documents ({report.embedded} embedded) in {time.perf_counter() - t0:.1f}s; "
               f"version {report.version}"]
        if new_model and new_model != retriever.settings.encoder.model:
            out.append(f"The index now uses {new_model}: set `model: {new_model}` in your config (or RETRIEVE_MODEL) "
                       "so that searches use it too.")
        return out

    emit(as_json, report.as_dict(), lines)


def _merge_lines(merges: list[dict[str, Any]]) -> list[str]:
    """One line per merge report (as :meth:`MergeReport.as_dict` gives it)."""
    out = []
    for m in merges:
        if m["abandoned"]:
            out.append(f"Merge ({m['reason']}) abandoned: {m['abandoned']}.")
            continue
        breadth = f"efSearch {m['ef_search']}" if m.get("ef_search") else f"{m.get('nprobe')} lists"
        recall = (f", recall@10 {m['recall']:.3f} at {breadth}"
                  if m["recall"] is not None and m["kind"] not in ("flat", None, "") else "")
        out.append(f"Merged {m['inputs']} segments ({m['reason']}, {m['live']} documents) into one "
                   f"{m['kind'] or 'dropped'} segment{recall} in {m['seconds']:.1f}s; {m['segments_after']} segments now.")
    return out


@click.command()
@click.option("--fewest", is_flag=True, help="Merge down to the fewest segments index.merge_memory_mb allows "
              "(after a bulk load: each segment costs a search its own lookup).")
@json_option
@pass_retriever
def compact(retriever: Retriever, fewest: bool, as_json: bool) -> None:
    """Merge index segments as the merge policy asks, then give space back: unused
    embeddings (deleted documents, old texts, other models), applied change-log rows,
    index files no generation uses, and the database file's free pages. The query
    sample keeps what search.query_sample and search.log_queries allow now.

    \b
        retrieve compact
        retrieve compact --fewest
    """
    from retrieval.sync.maintenance import compact as run_compact

    before = retriever.status()
    result = run_compact(retriever, fewest=fewest)
    after = retriever.status()
    result["database_bytes_before"] = before["database_bytes"]
    result["database_bytes_after"] = after["database_bytes"]
    emit(as_json, result, lambda: [
        *_merge_lines(result["merges"]),
        f"Removed {result['embeddings_removed']} unused embeddings and {result['changes_removed']} applied "
        f"change-log rows; database {size(before['database_bytes'])} -> {size(after['database_bytes'])}, "
        f"index versions freed {size(result['index_bytes_freed'])}."
    ])


@click.command("index-field")
@click.argument("field", required=False)
@click.option("--drop", is_flag=True, help="Drop the field's index instead.")
@json_option
@pass_retriever
def index_field(retriever: Retriever, field: str | None, drop: bool, as_json: bool) -> None:
    """Index a metadata FIELD that filters use often (a database expression index).

    Without FIELD, list the indexed fields. A dotted FIELD reaches a nested value.

    \b
        retrieve index-field category
        retrieve index-field specs.brand
        retrieve index-field category --drop
        retrieve index-field
    """
    if field is None:
        if drop:
            raise click.UsageError("--drop needs a FIELD")
        fields = retriever.store.field_indexes()
        emit(as_json, {"indexes": fields},
             lambda: [f"{f['field']}  ({f['name']})" for f in fields] or ["No metadata field is indexed."])
        return
    t0 = time.perf_counter()
    name = retriever.store.index_field(field, drop=drop)
    took = time.perf_counter() - t0
    emit(as_json, {"field": field, "index": name, "dropped": drop, "seconds": round(took, 3)},
         lambda: [f"{'Dropped' if drop else 'Indexed'} metadata field {field} ({name}) in {took:.2f}s."])


COMMANDS = [sync, verify, reindex, compact, index_field]
