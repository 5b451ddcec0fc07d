"""Long documents end to end: split into passages by the sync, ranked by their best
passage, the passage shown; on SQLite and PostgreSQL.

The mechanics run on the hash-384 test encoder (its window is 256 tokens, a token per
word or punctuation mark); what needs meaning (a question finding a document's last
paragraph) runs on the real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import REAL
from tests.fixtures.stores import write_jsonl


def article(paragraphs: int = 12, words: int = 120, topic: str = "t") -> str:
    """A long text: ``paragraphs`` paragraphs of ``words`` words each, every paragraph with
    words of its own (``t3w17``), separated by blank lines."""
    return "\n\n".join(" ".join(f"{topic}{p}w{w}" for w in range(words)) + "." for p in range(paragraphs))


def passages_table(r: Any) -> list[tuple[int, int, int, int, str]]:
    from sqlalchemy import text

    with r.store.engine.connect() as conn:
        return [tuple(row) for row in conn.execute(text(
            "SELECT doc_id, ordinal, start_char, end_char, content_hash FROM passages ORDER BY doc_id, ordinal"))]


def vectors_of(r: Any, hashes: list[str]) -> dict[str, np.ndarray]:
    with r.store.read() as snap:
        return snap.embeddings(r.index_store.model_key(), hashes)


@pytest.mark.both_databases
def test_long_documents_are_split_recorded_and_found_by_any_passage(make_retriever: Any) -> None:
    r = make_retriever()
    long = article()
    report = r.ingest([{"id": "long", "text": long}, *({"id": f"s{i}", "text": f"short note {i}"} for i in range(5))])
    assert report.sync.added == 6 and report.sync.long_documents == 1 and report.sync.passages > 6
    rows = passages_table(r)
    n = len(rows)
    assert n == report.sync.passages - 5 and n >= 6  # 12 x 121 tokens in windows of 256
    # The passages tile the text: in order, within it, each at most the window, and
    # together every paragraph.
    doc_id = r.store.get("long").id
    assert {row[0] for row in rows} == {doc_id} and [row[1] for row in rows] == list(range(n))
    assert rows[0][2] == 0 and rows[-1][3] == len(long)
    assert all(a[3] <= b[2] for a, b in zip(rows, rows[1:]))
    assert r.status()["indexed"] == 5 + n and r.verify().ok

    # A query made of one late paragraph's words finds the document by that passage.
    hits = r.search("t10w3 t10w40 t10w77 t10w100", k=3)
    assert hits[0].id == "long"
    p = hits[0].passage
    assert p is not None and p["of"] == n and p["text"] == long[p["start"]:p["end"]] and "t10w40" in p["text"]
    assert p["ordinal"] == next(i for i, row in enumerate(rows) if row[2] <= long.index("t10w40") < row[3])
    # A short document has no passage; every hit is a distinct document.
    many = r.search("t1w1 t2w2 t3w3 t4w4 t5w5 note", k=6)
    assert len({h.id for h in many}) == len(many) == 6
    assert all(h.passage is None for h in many if h.id != "long")


@pytest.mark.both_databases
def test_editing_one_paragraph_embeds_only_its_passage(make_retriever: Any) -> None:
    r = make_retriever()
    long = article()
    r.ingest([{"id": "long", "text": long}])
    before = passages_table(r)
    edited = long.replace("t7w5 ", "x7w5 ")  # one word of paragraph 7, same token count
    report = r.ingest([{"id": "long", "text": edited}], wait=True)  # its sync's report is read
    assert report.updated == 1 and report.sync.embedded == 1
    after = passages_table(r)
    assert [row[1:4] for row in after] == [row[1:4] for row in before]  # the same cuts
    assert sum(a[4] != b[4] for a, b in zip(after, before)) == 1
    assert r.verify().ok
    assert r.search("x7w5 t7w6 t7w7", k=1)[0].passage["text"].count("x7w5") == 1


@pytest.mark.both_databases
def test_passage_vectors_survive_garbage_collection_and_go_with_their_document(make_retriever: Any) -> None:
    from retrieval.sync.space import collect_garbage

    r = make_retriever()
    r.ingest([{"id": "long", "text": article()}, {"id": "other", "text": article(topic="u")}])
    stored = r.status()["stored_vectors"]
    assert collect_garbage(r.store, r.index_store, r.replica_name)["embeddings"] == 0
    assert r.reindex().embedded == 0  # every passage vector is still stored
    r.delete(["long"])
    removed = collect_garbage(r.store, r.index_store, r.replica_name)["embeddings"]
    assert removed == stored - len(passages_table(r)) > 0  # long's passages, nothing of other's
    assert {row[0] for row in passages_table(r)} == {r.store.get("other").id}
    assert r.verify().ok and r.search("t3w3 t3w4", k=5)[0].id == "other"


@pytest.mark.both_databases
def test_the_backlog_is_scored_by_passages_and_shows_them(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest([{"id": f"s{i}", "text": f"short note {i}"} for i in range(5)])
    long = article()
    r.ingest([{"id": "long", "text": long}], sync=False)
    assert passages_table(r) == []  # not split by a sync yet
    hit = r.search("t11w3 t11w50 t11w90", k=1)[0]
    assert hit.id == "long" and hit.passage is not None and "t11w50" in hit.passage["text"]
    assert hit.passage["ordinal"] > 0 and hit.passage["text"] == long[hit.passage["start"]:hit.passage["end"]]
    r.sync()
    again = r.search("t11w3 t11w50 t11w90", k=1)[0]
    assert again.passage == hit.passage and again.score == pytest.approx(hit.score, abs=1e-5)


def test_chunk_tokens_0_is_one_truncated_vector_per_document_and_switching_rebuilds(make_retriever: Any,
                                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "store"
    off = make_retriever(folder, chunk_tokens=0)
    long = article()
    shorts = [{"id": f"s{i}", "text": f"short note {i}"} for i in range(5)]
    report = off.ingest([{"id": "long", "text": long}, *shorts])
    assert report.sync.passages == 6 and report.sync.long_documents == 0 and passages_table(off) == []
    truncated = next(h.score for h in off.search("t11w3 t11w50 t11w90", k=6) if h.id == "long")
    first = off.status()["stored_vectors"]
    off.close()

    on = make_retriever(folder)  # the default: passages within the model's window
    rebuilt = on.sync()
    # Rebuilt from stored vectors: only the long document's passages are embedded.
    assert rebuilt.full and rebuilt.embedded == len(passages_table(on)) and rebuilt.long_documents == 1
    assert on.status()["stored_vectors"] == first + rebuilt.embedded
    found = on.search("t11w3 t11w50 t11w90", k=1)[0]
    # Past the window, the truncated vector never saw paragraph 11; its passage did.
    assert found.id == "long" and found.score > 1.5 * truncated and on.verify().ok
    assert make_retriever(folder).sync().changes == 0  # the same splitter: nothing to do


def test_similar_uses_the_normalised_mean_of_a_documents_passage_vectors(make_retriever: Any) -> None:
    r = make_retriever()
    long = article()
    r.ingest([{"id": "long", "text": long}, *({"id": f"s{i}", "text": f"t{i}w{i} t{i}w9 short {i}"} for i in range(8))])
    vectors = vectors_of(r, [row[4] for row in passages_table(r)])
    mean = np.mean([vectors[row[4]] for row in passages_table(r)], axis=0)
    query = mean / np.linalg.norm(mean)
    hits = r.similar("long", k=8)
    assert "long" not in {h.id for h in hits} and len(hits) == 8
    for h in hits:
        own = vectors_of(r, [r.store.get(h.id).content_hash])
        assert h.score == pytest.approx(float(next(iter(own.values())) @ query), abs=1e-5)


def test_verify_sees_passages_that_do_not_match_the_text(make_retriever: Any) -> None:
    r = make_retriever()
    r.ingest([{"id": "long", "text": article()}])
    assert r.verify().ok
    # Change the text behind the index's back, without a change-log row: the passages
    # the index holds are no longer the document's.
    from sqlalchemy import text

    with r.store.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER documents_log_update"))
        conn.execute(text("UPDATE documents SET text = :t"), {"t": article(topic="z")})
    report = r.verify()
    assert not report.ok and any("long" in p or "document" in p for p in report.problems)


def test_the_cli_reports_passages_and_shows_the_passage(store_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    rows = [{"id": "long", "text": article()}, *({"id": f"s{i}", "text": f"short note {i}"} for i in range(3))]
    out = runner.invoke(cli, ["ingest", str(write_jsonl(tmp_path / "docs.jsonl", rows))])
    assert out.exit_code == 0, out.output
    assert "indexed 4 documents as" in out.output and "1 was longer than the model's window" in out.output
    shown = runner.invoke(cli, ["search", "t9w3 t9w50 t9w90", "-k", "1"])
    assert shown.exit_code == 0 and "long  [passage " in shown.output  # the passage, not the opening
    assert "t0w0" not in shown.output
    as_json = json.loads(runner.invoke(cli, ["search", "t9w3 t9w50 t9w90", "-k", "1", "--json"]).output)
    hit = as_json["results"][0] if isinstance(as_json, dict) else as_json[0]
    assert hit["passage"]["of"] > 1 and "t9w50" in hit["passage"]["text"]
    status = runner.invoke(cli, ["status"])
    assert "passages" in status.output


def test_a_question_finds_the_last_paragraph_of_a_long_article(make_retriever: Any, encoder: Any) -> None:
    """The issue's new user: a gardening article whose last paragraph is about repairing a
    bicycle chain, among short distractors. Split, dense search ranks it first by that
    paragraph; with ``chunk_tokens: 0`` (one truncated vector) it is out of sight."""
    garden = ("Roses need at least six hours of sun, well drained soil rich in compost, and deep watering "
              "once a week rather than a little every day. Mulch keeps the roots cool in summer. ")
    paragraphs = [garden * 3 for _ in range(12)]
    paragraphs.append("Finally, a word on the bicycle you ride to the allotment. To repair a broken chain, "
                      "remove the damaged link with a chain tool, join the ends with a quick link, and oil it.")
    text = "\n\n".join(paragraphs)
    distractors = [f"Tomatoes, beans and courgettes: sowing guide number {i} for the vegetable patch." for i in range(8)]
    docs = [{"id": "article", "text": text}, *({"id": f"d{i}", "text": t} for i, t in enumerate(distractors))]
    question = "how do I repair a broken bicycle chain"

    split = make_retriever(model=REAL)
    split.ingest(docs)
    top = split.search(question, k=3)[0]
    assert top.id == "article" and top.passage is not None
    assert top.passage["ordinal"] == top.passage["of"] - 1 and "chain tool" in top.passage["text"]
    assert top.score > 0.5

    whole = make_retriever(Path(split.settings.store.index_dir).parent.parent / "off", model=REAL, chunk_tokens=0)
    whole.ingest(docs)
    ranked = [h.id for h in whole.search(question, k=len(docs))]
    assert ranked.index("article") > 0 and whole.search(question, k=1)[0].score < top.score


@pytest.mark.both_databases
def test_a_bulk_embed_embeds_passages_and_the_sync_reuses_them(make_retriever: Any) -> None:
    r = make_retriever()
    long = article()
    r.ingest([{"id": "long", "text": long}, {"id": "s", "text": "short note"}], sync=False)
    assert r.status()["embedded"] == 0
    report = r.embed()
    recorded = passages_table(r)
    assert len(recorded) > 1 and report.embedded == len(recorded) + 1  # the passages, not the truncated whole
    assert r.status()["embedded"] == 2
    assert r.embed().embedded == 0  # nothing left to do
    assert r.sync().embedded == 0 and r.verify().ok


def test_embed_first_embeds_the_passages_a_sync_needs(make_retriever: Any) -> None:
    r = make_retriever()
    report = r.ingest([{"id": "long", "text": article()}], embed_first=True)
    assert report.sync.embedded == 0 and report.sync.long_documents == 1 and r.verify().ok
