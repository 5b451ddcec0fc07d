"""Bad input: a `file:line: reason` for each record, and nothing stored is harmed."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SEED, write_jsonl
from retrieval.cli import cli


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
