"""Upsert, unchanged re-ingest, delete, and writes by other programs through plain SQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SEED
from tests.fixtures.databases import execute_sql
from tests.fixtures.stores import write_jsonl

pytestmark = pytest.mark.both_databases


@pytest.fixture
def count_encodes(hash_encoder: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record how many texts each encoder call receives (the stores here use hash-384)."""
    encoder = hash_encoder
    calls: list[int] = []
    original = encoder.encode

    def counting(texts, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return original(texts, **kw)

    monkeypatch.setattr(encoder, "encode", counting)
    return calls


def _docs(n: int = 4) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "text": SEED[i], "metadata": {"n": i}} for i in range(n)]


def test_upsert_unchanged_and_update(make_retriever, count_encodes: list[int]) -> None:
    r = make_retriever()
    first = r.ingest(_docs())
    assert (first.added, first.updated, first.unchanged) == (4, 0, 0)
    assert sum(count_encodes) == 4

    count_encodes.clear()
    again = r.ingest(_docs())
    assert (again.added, again.updated, again.unchanged) == (0, 0, 4)
    assert count_encodes == []  # nothing re-embedded, no encoder call at all

    changed = _docs()
    changed[1]["text"] = "Waterproof hiking boots with a grippy sole."
    changed[2]["metadata"] = {"n": 2, "colour": "black"}
    report = r.ingest(changed)
    assert (report.added, report.updated, report.unchanged) == (0, 2, 2)
    assert sum(count_encodes) == 1  # only the new text; a metadata change needs no embedding
    hit = r.search("boots for hiking in the mountains", k=1)[0]
    assert hit.id == "d1" and "hiking boots" in hit.text
    assert r.get("d2").metadata == {"n": 2, "colour": "black"}
    assert not any("running shoes" in h.text for h in r.search("running shoes", k=4))
    assert r.verify().ok


def test_identical_texts_are_embedded_once(make_retriever, count_encodes: list[int]) -> None:
    r = make_retriever()
    docs = [{"id": f"x{i}", "text": "Add your description here"} for i in range(5)]
    docs.append({"id": "y", "text": SEED[0]})
    report = r.ingest(docs)
    assert report.added == 6
    assert sum(count_encodes) == 2
    assert report.sync is not None and report.sync.embedded == 2
    assert r.status()["stored_vectors"] == 2
    assert {h.id for h in r.search("Add your description here", k=5)} == {f"x{i}" for i in range(5)}


def test_reverting_a_text_reuses_its_stored_vector(make_retriever, count_encodes: list[int]) -> None:
    r = make_retriever()
    r.ingest([{"id": "a", "text": SEED[0]}])
    r.ingest([{"id": "a", "text": SEED[1]}])
    count_encodes.clear()
    r.ingest([{"id": "a", "text": SEED[0]}])
    assert count_encodes == []
    assert r.search("cotton t-shirt", k=1)[0].text == SEED[0]


def test_delete(make_retriever) -> None:
    r = make_retriever()
    r.ingest(_docs())
    deleted, missing = r.delete(["d1", "nope"], wait=True)  # published before returning: counted below
    assert deleted == 1 and missing == ["nope"]
    ids = [h.id for h in r.search("What are good shoes for jogging?", k=10)]
    assert "d1" not in ids and len(ids) == 3
    assert r.status()["indexed"] == 3
    assert r.verify().ok


def test_rows_written_by_plain_sql_are_picked_up(make_retriever, tmp_path: Path) -> None:
    r = make_retriever()
    r.ingest(_docs(2))
    # Another program (sqlite3, psycopg) knows nothing of content hashes or the change log.
    execute_sql(r.settings.store.database_url,
                f"INSERT INTO documents (external_id, text, metadata) VALUES ('ext', '{SEED[2]}', '{{\"src\": \"sql\"}}')",
                "UPDATE documents SET text = 'A woollen winter scarf, warm and soft.' WHERE external_id = 'd0'",
                "DELETE FROM documents WHERE external_id = 'd1'")

    # Searches are consistent before any sync: the new row is found, the deleted one is not.
    hits = r.search("bag for my laptop", k=3)
    assert hits[0].id == "ext" and hits[0].metadata == {"src": "sql"}
    assert "d1" not in [h.id for h in r.search("running shoes", k=3)]

    report = r.sync()
    assert report.changes == 3
    assert r.status()["pending_changes"] == 0
    assert r.search("bag for my laptop", k=1)[0].id == "ext"
    assert r.search("a warm scarf for winter", k=1)[0].id == "d0"
    assert {h.id for h in r.search("anything", k=10)} == {"d0", "ext"}
    assert r.verify().ok


def test_cli_upsert_get_delete_and_sync(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    data = write_jsonl(tmp_path / "docs.jsonl", _docs())
    assert runner.invoke(cli, ["ingest", str(data)]).exit_code == 0
    again = runner.invoke(cli, ["ingest", str(data)])
    assert "0 added, 0 updated, 4 unchanged, 0 invalid" in again.output

    got = runner.invoke(cli, ["get", "d2", "--json"])
    assert json.loads(got.output) == {"id": "d2", "text": SEED[2], "metadata": {"n": 2}}
    missing = runner.invoke(cli, ["get", "zzz"])
    assert missing.exit_code == 1 and "no document with id 'zzz'" in missing.output

    ids = tmp_path / "ids.txt"
    ids.write_text("d0\nd3\n")
    deleted = runner.invoke(cli, ["delete", "--file", str(ids)])
    assert deleted.exit_code == 0 and "2 deleted" in deleted.output
    partly = runner.invoke(cli, ["delete", "d1", "ghost"])
    assert partly.exit_code == 1 and "not found: ghost" in partly.output

    st = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert st["documents"] == 1 and st["indexed"] == 1 and st["pending_changes"] == 0
    assert "Up to date" in runner.invoke(cli, ["sync"]).output
    verify = runner.invoke(cli, ["verify"])
    assert verify.exit_code == 0 and verify.output.startswith("OK")


def test_ingest_formats_and_fields_from_the_cli(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    csv_file = tmp_path / "items.csv"
    csv_file.write_text("sku,title,body,colour\nA1,Trail shoes,Grippy running shoes for muddy trails,green\n"
                        "B2,Tea kettle,Stainless steel kettle with a whistle,silver\n", encoding="utf-8")
    result = runner.invoke(cli, ["ingest", "--id-field", "sku", "--text-field", "title", "--text-field", "body", str(csv_file)])
    assert result.exit_code == 0, result.output
    doc = json.loads(runner.invoke(cli, ["get", "A1", "--json"]).output)
    assert doc == {"id": "A1", "text": "Trail shoes Grippy running shoes for muddy trails", "metadata": {"colour": "green"}}

    txt = tmp_path / "notes.txt"
    txt.write_text("Boil water for tea\nRunning in the rain\n", encoding="utf-8")
    assert runner.invoke(cli, ["ingest", str(txt)]).exit_code == 0
    stdin = runner.invoke(cli, ["ingest", "--format", "jsonl", "-"], input='{"id": "s1", "text": "A cast iron frying pan"}\n')
    assert stdin.exit_code == 0, stdin.output
    top = json.loads(runner.invoke(cli, ["search", "frying pan", "--json", "-k", "1"]).output)["results"][0]
    assert top["id"] == "s1"
    # Plain-text ids are stable: the same file again changes nothing.
    assert "0 added, 0 updated, 2 unchanged" in runner.invoke(cli, ["ingest", str(txt)]).output
    assert json.loads(runner.invoke(cli, ["status", "--json"]).output)["documents"] == 5


def test_ingest_no_sync_leaves_indexing_to_sync_but_search_already_sees_it(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    first = write_jsonl(tmp_path / "first.jsonl", [{"id": "pan", "text": "A cast iron frying pan"}])
    assert runner.invoke(cli, ["ingest", str(first)]).exit_code == 0
    data = write_jsonl(tmp_path / "docs.jsonl", _docs())
    result = runner.invoke(cli, ["ingest", "--no-sync", str(data)])
    assert result.exit_code == 0 and "4 added" in result.output
    st = json.loads(runner.invoke(cli, ["status", "--json"]).output)
    assert st["documents"] == 5 and st["indexed"] == 1 and st["pending_changes"] == 4
    top = json.loads(runner.invoke(cli, ["search", "--json", "-k", "1", "running shoes for jogging"]).output)["results"][0]
    assert top["id"] == "d1"
    assert "4 changed documents applied" in runner.invoke(cli, ["sync"]).output
    assert json.loads(runner.invoke(cli, ["status", "--json"]).output)["indexed"] == 5


def test_a_one_time_encoder_setup_is_reported_apart_from_the_rate(store_env, tmp_path: Path, make_retriever,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The first use of the default encoder exports the model (seconds, once): an ingest
    reports that apart, so its documents/s is the rate of ingesting, not of exporting.

    A fake clock stands in for time: it moves only when the stand-in export runs (5 s)
    and by a tick per reading, so the figures are exact, whatever this machine's speed."""
    import time as real_time
    import types

    from retrieval import writes as retriever_module
    from retrieval.embed import factory

    now = [1000.0]

    def perf_counter() -> float:
        now[0] += 0.001
        return now[0]

    clock = types.SimpleNamespace(perf_counter=perf_counter, time=real_time.time, monotonic=real_time.monotonic)
    monkeypatch.setattr(retriever_module, "time", clock)
    monkeypatch.setattr(factory, "time", clock)
    real = factory._build

    def exporting_build(*args: Any, **kwargs: Any) -> Any:
        encoder = real(*args, **kwargs)
        now[0] += 5.0  # a first-use export
        encoder.setup_seconds = 5.0
        return encoder

    monkeypatch.setattr(factory, "_build", exporting_build)
    monkeypatch.setattr(factory, "_CACHE", {})
    r = make_retriever(tmp_path / "library")
    before = now[0]
    report = r.ingest(_docs())  # builds the encoder: it is loaded lazily
    spent = now[0] - before
    assert report.setup_seconds == 5.0 and report.added == 4
    assert 0 < report.seconds < 1 and report.seconds + report.setup_seconds <= spent  # the export is not in it
    assert report.docs_per_second == pytest.approx(4 / report.seconds)
    # The encoder is built once per process: the next ingest pays nothing for it.
    assert make_retriever(tmp_path / "library").ingest([{"id": "d9", "text": "A wool scarf"}]).setup_seconds == 0.0

    # The command says so on stderr, apart from its summary line.
    monkeypatch.setattr(factory, "_CACHE", {})
    data = write_jsonl(tmp_path / "docs.jsonl", _docs())
    first = CliRunner().invoke(cli, ["ingest", str(data)])
    assert first.exit_code == 0, first.output
    assert "preparing the encoder for its first use took 5.0s (model export and checks, once" in first.stderr
    assert first.stdout.startswith("4 added, 0 updated, 0 unchanged, 0 invalid in ")
