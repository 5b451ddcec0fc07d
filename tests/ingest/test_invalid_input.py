"""Bad input: a `file:line: reason` for each record, and nothing stored is harmed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SEED
from tests.fixtures.stores import write_jsonl


def _snapshot(store: Path) -> tuple[list[tuple], str, str]:
    """Every row of every table, the current index generation and a digest of every index file."""
    con = sqlite3.connect(store / "retrieval.db")
    rows = []
    for table in ("documents", "embeddings", "changes"):
        rows.append(tuple(con.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()))
    con.close()
    current = (store / "index" / "CURRENT").read_text()
    files = sorted(p for p in (store / "index").rglob("*") if p.is_file() and "lock" not in p.name)
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in files)).hexdigest()
    return rows, current, digest


CASES = [
    ("bad.jsonl", b'{"id": "n1", "text": "fine"}\n{"id": "n2", "text": "broken"\n', "bad.jsonl:2: malformed JSON"),
    ("missing.jsonl", b'{"id": "n1", "text": "fine"}\n{"id": "n2", "body": "no text"}\n', "missing.jsonl:2: missing text field 'text'"),
    ("empty.jsonl", b'{"id": "n1", "text": "fine"}\n\n{"id": "n2", "text": "   "}\n', "empty.jsonl:3: empty text"),
    ("idtype.jsonl", b'{"id": "n1", "text": "fine"}\n{"id": 1.5, "text": "float id"}\n', "idtype.jsonl:2: id must be a string or integer, got float"),
    ("idnull.jsonl", b'{"id": null, "text": "null id"}\n', "idnull.jsonl:1: id must be a string or integer, got null"),
    ("latin1.jsonl", b'{"id": "n1", "text": "fine"}\n{"id": "n2", "text": "caf\xe9"}\n', "latin1.jsonl:2: text is not valid UTF-8"),
    ("dup.jsonl", b'{"id": "n1", "text": "one"}\n{"id": "n1", "text": "two"}\n', "dup.jsonl:2: id 'n1' appears again with different text"),
    ("latin1.csv", b'id,text\nn1,fine\nn2,caf\xe9\n', "latin1.csv:3: text is not valid UTF-8"),
    ("array.json", b'[\n  {"id": "n1", "text": "fine"},\n  {"id": "n2"}\n]\n', "array.json:3: missing text field 'text'"),
]


@pytest.mark.parametrize(("name", "content", "expected"), CASES, ids=[c[0] for c in CASES])
def test_invalid_record_is_reported_and_nothing_changes(store_env, tmp_path: Path, name: str, content: bytes, expected: str) -> None:
    runner = CliRunner()
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert runner.invoke(cli, ["ingest", str(seed)]).exit_code == 0
    before = _snapshot(tmp_path / "store")

    bad = tmp_path / name
    bad.write_bytes(content)
    result = runner.invoke(cli, ["ingest", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:{expected.split(':', 1)[1]}" in result.output, result.output
    assert "nothing was written" in result.output
    assert "Traceback" not in result.output
    assert _snapshot(tmp_path / "store") == before


def test_skip_invalid_stores_the_valid_records(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    bad = tmp_path / "mixed.jsonl"
    bad.write_bytes(b'{"id": "ok1", "text": "A cast iron frying pan"}\n{"id": "bad", "text": ""}\n{"id": "ok2", "text": "A wool scarf"}\n')
    result = runner.invoke(cli, ["ingest", "--skip-invalid", str(bad)])
    assert result.exit_code == 0
    assert f"skipped {bad}:2: empty text" in result.output
    assert "2 added, 0 updated, 0 unchanged, 1 invalid" in result.output


def test_missing_file_and_unknown_extension_are_one_line_errors(store_env, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["ingest", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "nope.jsonl" in result.output
    odd = tmp_path / "data.xyz"
    odd.write_text("hello\n")
    result = runner.invoke(cli, ["ingest", str(odd)])
    assert result.exit_code == 1 and "--format" in result.output


def test_a_document_over_max_document_bytes_is_refused_with_its_size(store_env, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RETRIEVE_MAX_DOCUMENT_BYTES", "1000")
    runner = CliRunner()
    seed = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert runner.invoke(cli, ["ingest", str(seed)]).exit_code == 0
    before = _snapshot(tmp_path / "store")
    big = write_jsonl(tmp_path / "big.jsonl", [{"id": "ok", "text": "fits"}, {"id": "big", "text": "word " * 400},
                                              {"id": "meta", "text": "fits", "metadata": {"blob": "x" * 2000}}])
    # A line far beyond any valid record is refused without being read into memory.
    with open(big, "a", encoding="utf-8") as fh:
        fh.write('{"id": "huge", "text": "' + "y" * 2_200_000 + '"}\n')
    result = runner.invoke(cli, ["ingest", str(big)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{big}:2: text is 2.0 KB; the limit is 1.0 KB (max_document_bytes)" in result.output
    assert f"{big}:3: metadata is 2.0 KB as JSON; the limit is 1.0 KB (max_document_bytes)" in result.output
    assert f"{big}:4: line is 2.2 MB, more than any document within max_document_bytes can take" in result.output
    assert "3 of 4 records are invalid; nothing was written" in result.output
    assert _snapshot(tmp_path / "store") == before


def test_an_unterminated_csv_quote_counts_every_row_it_swallows(store_env, tmp_path: Path) -> None:
    bad = tmp_path / "items.csv"
    bad.write_text('id,text\nc1,a cotton shirt\nc2,"a wool scarf\nc3,a linen dress\nc4,a silk tie\n', encoding="utf-8")
    result = CliRunner().invoke(cli, ["ingest", "--skip-invalid", str(bad)])
    assert result.exit_code == 0, result.output
    assert f"skipped {bad}:3: malformed CSV" in result.output
    assert f"skipped {bad}:4: not read: inside the quoted field that starts at line 3" in result.output
    assert f"skipped {bad}:5: not read" in result.output
    assert "1 added, 0 updated, 0 unchanged, 3 invalid" in result.output


def test_csv_numbers_are_numbers_so_filters_on_them_work(store_env, tmp_path: Path) -> None:
    items = tmp_path / "items.csv"
    items.write_text("id,text,price,zip\nc1,a cotton shirt,89,02134\nc2,a wool coat,189.5,10001\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(items)]).exit_code == 0
    found = runner.invoke(cli, ["search", "shirt", "--where", "price<100", "--json"])
    assert [h["id"] for h in __import__("json").loads(found.output)["results"]] == ["c1"]
    got = runner.invoke(cli, ["get", "c1", "--json"])
    assert __import__("json").loads(got.output)["metadata"] == {"price": 89, "zip": "02134"}
    as_text = runner.invoke(cli, ["ingest", "--csv-types", "text", str(items)])
    assert "2 updated" in as_text.output
    assert __import__("json").loads(runner.invoke(cli, ["get", "c1", "--json"]).output)["metadata"]["price"] == "89"


def test_a_directory_is_named_as_one(store_env, tmp_path: Path) -> None:
    folder = tmp_path / "adir"
    folder.mkdir()
    result = CliRunner().invoke(cli, ["ingest", str(folder)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {folder} is a directory, not a file"


def test_the_python_api_refuses_what_the_cli_refuses(make_retriever) -> None:
    import math

    from retrieval.documents import Document
    from retrieval.errors import InvalidInputError

    r = make_retriever(max_document_bytes=1000)
    r.ingest([{"id": "1", "text": "one"}, {"id": "2", "text": "two"}, {"id": "12", "text": "twelve"},
              {"id": "p2", "text": "a lamp", "metadata": {"price": 30}}])
    # A bare string is not a sequence of ids: delete("12") once deleted "1" and "2".
    with pytest.raises(TypeError, match="a sequence of ids"):
        r.delete("12")
    assert r.delete(["12"]) == (1, [])
    assert {h.id for h in r.search("one two twelve", k=10)} == {"1", "2", "p2"}
    for bad in ("text", b"text", {"id": "x", "text": "y"}):
        with pytest.raises(TypeError, match="sequence of documents"):
            r.ingest(bad)
    with pytest.raises(TypeError, match=r"documents\[0\] must be a document"):
        r.ingest(["text"])
    with pytest.raises(TypeError, match="plus must be a sequence of texts"):
        r.search("king", plus="woman")

    refused = [
        ({"id": "n1", "text": "a lamp", "metadata": {"x": math.nan}}, "metadata.x: nan is not valid JSON"),
        ({"id": "n2", "text": "a lamp", "metadata": {"y": [1, math.inf]}}, "metadata.y[1]: inf is not valid JSON"),
        ({"id": "n3", "text": "a lamp", "metadata": "red"}, "metadata must be a JSON object, got string"),
        ({"id": "n4", "text": "   "}, "empty text"),
        ({"id": True, "text": "a lamp"}, "id must be a string or integer, got boolean"),
        ({"id": "n5", "text": "x" * 1001}, "text is 1.0 KB; the limit is 1.0 KB (max_document_bytes)"),
        ({"id": "n6", "text": "a lamp", "title": "Lamp"}, "unknown field 'title'"),
        ({"id": "n7", "text": "a \ud800 lamp"}, "text is not valid Unicode"),
    ]
    for doc, reason in refused:
        with pytest.raises(InvalidInputError) as err:
            r.ingest([{"id": "fine", "text": "a fine document"}, doc])
        assert reason in str(err.value) and "nothing was written" in str(err.value)
    with pytest.raises(InvalidInputError, match="appears again with different text"):
        r.ingest([{"id": "d", "text": "one"}, {"id": "d", "text": "two"}])
    assert r.store.count_documents() == 3  # nothing of the refused batches was written
    report = r.ingest([{"id": "fine", "text": "a fine document"}, {"id": "n1", "text": "x", "metadata": {"x": math.nan}}],
                      skip_invalid=True)
    assert (report.added, report.invalid) == (1, 1) and "metadata.x" in report.problems[0]
    same = r.ingest([{"id": "d", "text": "one", "metadata": {"v": 1}}, {"id": "d", "text": "one", "metadata": {"v": 2}}])
    assert same.added == 1 and r.get("d").metadata == {"v": 2}

    # get is a document, not a search hit with a made-up score.
    doc = r.get("p2")
    assert doc == Document("p2", "a lamp", {"price": 30}) and not hasattr(doc, "score")
    # Every filtered search still works: no NaN reached the database.
    assert [h.id for h in r.search("lamp", where={"price": {"$lt": 100}})] == ["p2"]


def test_verify_names_metadata_an_older_version_stored_with_nan(store_env, tmp_path: Path) -> None:
    from tests.fixtures.databases import execute_sql

    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-"], input="a brass lamp\n").exit_code == 0
    # What an older version let through from Python: NaN written into the JSON column.
    execute_sql(store_env["RETRIEVE_DATABASE_URL"],
                "INSERT INTO documents (external_id, text, metadata, content_hash) VALUES ('n1', 'a lamp', '{\"x\": NaN}', NULL)")
    assert runner.invoke(cli, ["sync"]).exit_code == 0
    verify = runner.invoke(cli, ["verify"])
    assert verify.exit_code == 1 and "document 'n1': its metadata is not valid JSON" in verify.output
    got = runner.invoke(cli, ["get", "n1", "--json"])
    assert got.exit_code == 0 and __import__("json").loads(got.output)["metadata"] == {"x": None}  # standard JSON
