"""What is there and how it is set up: `retrieve status` and `retrieve config`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from retrieval.cli.common import CliState, emit, json_option, pass_retriever, pass_state, size

if TYPE_CHECKING:
    from retrieval.retriever import Retriever


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def status_rows(st: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("documents", st["documents"]),
        ("embedded", f"{st['embedded']} (current model)"),
        ("indexed", f"{st['indexed']:,} passages (a document longer than the model's window is several)"),
        ("pending changes", st["pending_changes"]),
        ("model", f"{st['model']}  [{st['model_key']}]"),
        ("index", f"{st['index_type']}, generation {st['index_version'] or '(none yet)'}, "
                  f"{_count(len(st['segments']), 'segment')}"),
        ("database", f"{st['database']}  ({size(st['database_bytes'])})"),
        ("index folder", f"{st['index_dir']}  ({size(st['index_bytes'])})"),
    ]
    runs = st["backend"] if st["backend"] == "hash" else f"{st['backend']} {st['precision']}"
    rows.append(("encoder", runs + (f" ({st['backend_note']})" if st.get("backend_note") else "")))
    rec = st["reclaimable"]
    freeable = rec["unused_embedding_bytes"] + rec["free_database_bytes"] + rec["old_index_version_bytes"]
    rows.append(("reclaimable", f"{size(freeable)} ({rec['unused_embeddings']} unused embeddings; `retrieve compact`)"))
    w = st.get("worker")
    if w and w.get("running"):
        rows.append(("worker", f"running, pid {w['pid']}, last sync {w['last_sync'] or 'not yet'}"))
    else:
        rows.append(("worker", "not running" + (f" (last: pid {w['pid']}, last sync {w['last_sync']})" if w else "")))
    others = [o for o in st.get("workers") or [] if o["name"] != st.get("replica")]
    for o in others:
        seen = "running" if o.get("running") else "not running"
        rows.append(("  replica", f"{o['name']}: {seen}, pid {o['pid']} on {o['host']}, at change {o.get('last_seq', 0)}"))
    rows.append(("lag", f"{_count(st['pending_changes'], 'change')}, {st['lag_seconds']:.0f} s"))
    for seg in st["segments"]:
        guard = ""
        if seg["recall"] is not None and seg["type"] != "flat":
            breadth = f"efSearch {seg['ef_search']}" if seg["ef_search"] else f"{seg['nprobe']} lists"
            rescore = f", {seg['rescore']} re-scored per 10" if seg.get("rescore") else ""
            guard = f", recall@10 {seg['recall']:.3f} at {breadth}{rescore} ({seg.get('calibration') or 'midpoints'})"
        elif seg["exact_by_guard"]:
            guard = ", kept exact by the recall guard"
        rows.append(("  segment", f"{seg['type']:<5} {seg['passages']:>10,} passages, {seg['tombstones']:.1%} dead"
                                   f"{guard} ({seg['origin']}, {size(seg['bytes'])})"))
    if w and w.get("merging"):
        rows.append(("merging", w["merging"]))
    last = st.get("last_merge")
    if last:
        rows.append(("last merge", f"{last['reason']}: {last['inputs']} segments, {last['rows']:,} documents -> "
                                   f"{last['kind'] or 'dropped'} in {last['seconds']:.1f}s"))
    if st["pending_merges"]:
        rows.append(("pending merges", f"{len(st['pending_merges'])} (the worker runs them; or `retrieve compact`)"))
    if st.get("diverged"):
        rows.append(("WARNING", f"the index does not follow this database: {st['diverged']}; the next sync or "
                                "search rebuilds it from the stored vectors"))
    if not st["model_matches_index"]:
        rows.append(("WARNING", f"index was built with {st['index_model_key']}; run `retrieve reindex`"))
    return rows


@click.command()
@json_option
@pass_retriever
def status(retriever: Retriever, as_json: bool) -> None:
    """Show documents, embeddings, index version, pending changes and sizes.

    \b
        retrieve status --json
    """
    st = retriever.status()
    emit(as_json, st, lambda: [f"{name:<16} {value}" for name, value in status_rows(st)])


@click.command("config")
@json_option
@pass_state
def config_cmd(state: CliState, as_json: bool) -> None:
    """Print the effective settings and where each one came from.

    \b
        retrieve config
        RETRIEVE_BATCH_SIZE=128 retrieve --model ./my-model config
    """
    rows = state.settings.describe()
    width = max(len(name) for name, _, _ in rows)
    emit(as_json, {name: {"value": value, "source": source} for name, value, source in rows}, lambda: [
        f"{name:<{width}}  {'null' if value is None else value!s:<40}  ({source})" for name, value, source in rows
    ])




@click.command("forget-replica")
@click.argument("name")
@pass_retriever
def forget_replica(retriever: Retriever, name: str) -> None:
    """Forget a replica that is gone for good (its worker row in the database).

    The change log is pruned only below the position every replica has applied; a
    replica that no longer exists would hold it back. `retrieve status` lists them.

    \b
        retrieve forget-replica search-c
    """
    from retrieval.errors import RetrievalError
    from retrieval.store.workers import forget_state

    if not forget_state(retriever.store, name):
        raise RetrievalError(f"no replica named {name!r} follows this database (see `retrieve status`)")
    click.echo(f"forgot replica {name}")


COMMANDS = [status, config_cmd, forget_replica]
