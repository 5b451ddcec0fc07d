"""Tests for retrieval.readers: every format, line numbers, and every reason a record is refused."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.readers import FORMATS, Invalid, Record, detect_format, read_records
from tests.conftest import REPO, SHARED_DATA

CRANFIELD = SHARED_DATA / "cranfield" / "corpus.jsonl"
SAMPLE = REPO / "retrieval" / "sample" / "products.jsonl"


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_bytes(content.encode("utf-8"))
    else:
        path.write_bytes(content)
    return str(path)


def jsonl(*objs: Any) -> str:
    return "".join(json.dumps(o) + "\n" for o in objs)


def reasons(invalid: list[Invalid]) -> list[tuple[str, str]]:
    return [(i.source.rsplit(":", 1)[1], i.reason) for i in invalid]


def txt_id(text: str) -> str:
    return "txt-" + hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- detect_format


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.JSONL", "jsonl"),
        ("a.json", "json"),
        ("dir.v2/a.csv", "csv"),
        ("a.txt", "text"),
        ("a.text", "text"),
        ("notes.md", "text"),
    ],
)
def test_detect_format(name: str, fmt: str) -> None:
    assert detect_format(name) == fmt
    assert fmt in FORMATS


@pytest.mark.parametrize("name", ["data.xml", "README", "archive.jsonl.gz", "x.tsv"])
def test_detect_format_unknown(name: str) -> None:
    with pytest.raises(ValueError) as err:
        detect_format(name)
    assert str(err.value) == (
        f"cannot tell the format of {name} from its extension; pass --format jsonl|json|csv|text"
    )


def test_read_records_unknown_extension_raises(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.dat", jsonl({"id": "a", "text": "x"}))
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_records([path])
    # An explicit format overrides detection.
    records, invalid = read_records([path], fmt="jsonl")
    assert [r.external_id for r in records] == ["a"] and invalid == []


def test_unknown_fmt_and_missing_file(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", jsonl({"id": "a", "text": "x"}))
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        read_records([path], fmt="xml")
    with pytest.raises(FileNotFoundError):
        read_records([path, str(tmp_path / "nope.jsonl")])
    with pytest.raises(ValueError, match="is a directory"):
        read_records([str(tmp_path)], fmt="jsonl")


def test_bad_field_arguments(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", jsonl({"id": "a", "text": "x"}))
    with pytest.raises(ValueError):
        read_records([path], text_fields=())
    with pytest.raises(ValueError):
        read_records([path], id_field="text")
    # A bare string is one field, not a sequence of one-letter fields.
    records, _ = read_records([path], text_fields="text")
    assert records[0].text == "x"


# ---------------------------------------------------------------- jsonl


def test_jsonl_basic(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        '{"id": "a", "text": "first doc", "lang": "en"}\n'
        "\n"
        "   \n"
        '{"id": 7, "text": "  second doc  "}\r\n'
        '{"id": "c", "text": "third", "metadata": {"version": "1.0"}}',  # no final newline
    )
    records, invalid = read_records([path])
    assert invalid == []
    assert records == [
        Record("a", "first doc", {"lang": "en"}, f"{path}:1"),
        Record("7", "second doc", {}, f"{path}:4"),
        Record("c", "third", {"version": "1.0"}, f"{path}:5"),
    ]


def test_source_uses_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "docs.jsonl", "\n\n" + jsonl({"id": "a", "text": "x"}))
    monkeypatch.chdir(tmp_path)
    records, _ = read_records(["docs.jsonl"])
    assert records[0].source == "docs.jsonl:3"


def test_jsonl_malformed_and_not_object(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        '{"id": "a", "text": "ok"}\n'
        '{"id": "b" "text": "x"}\n'
        "[1, 2]\n"
        '"just a string"\n'
        "42\n"
        "null\n"
        '{"id": "c", "text": NaN}\n'
        '{"id": "d", "text": "still read"}\n',
    )
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["a", "d"]
    assert reasons(invalid) == [
        ("2", "malformed JSON: Expecting ',' delimiter (column 12)"),
        ("3", "expected a JSON object, got array"),
        ("4", "expected a JSON object, got string"),
        ("5", "expected a JSON object, got integer"),
        ("6", "expected a JSON object, got null"),
        ("7", "malformed JSON: NaN is not valid JSON"),
    ]
    assert str(invalid[0]) == f"{path}:2: malformed JSON: Expecting ',' delimiter (column 12)"


def test_jsonl_malformed_column_17(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.jsonl", '{"id": "abcdef" "text": "x"}\n')
    _, invalid = read_records([path])
    assert reasons(invalid) == [("1", "malformed JSON: Expecting ',' delimiter (column 17)")]


@pytest.mark.parametrize(
    ("value", "json_type"),
    [
        ("null", "null"),
        ("true", "boolean"),
        ("false", "boolean"),
        ("1.5", "float"),
        ("1.0", "float"),
        ("[1]", "array"),
        ('{"a": 1}', "object"),
    ],
)
def test_wrong_id_type(tmp_path: Path, value: str, json_type: str) -> None:
    path = write(tmp_path, "docs.jsonl", f'{{"id": {value}, "text": "x"}}\n')
    records, invalid = read_records([path])
    assert records == []
    assert reasons(invalid) == [("1", f"id must be a string or integer, got {json_type}")]


def test_id_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        jsonl(
            {"text": "no id"},
            {"id": "", "text": "x"},
            {"id": "   ", "text": "x"},
            {"id": 0, "text": "zero"},
            {"id": -3, "text": "negative"},
            {"_id": "x", "text": "wrong field"},
        ),
    )
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["0", "-3"]
    assert reasons(invalid) == [
        ("1", "missing id field 'id'"),
        ("2", "empty id"),
        ("3", "empty id"),
        ("6", "missing id field 'id'"),
    ]
    records, invalid = read_records([path], id_field="_id")
    assert [r.external_id for r in records] == ["x"]
    assert invalid[0].reason == "missing id field '_id'"


def test_text_rules(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        jsonl(
            {"id": "a", "body": "no text field"},
            {"id": "b", "text": ""},
            {"id": "c", "text": " \t\n "},
            {"id": "d", "text": 5},
            {"id": "e", "text": None},
            {"id": "f", "text": ["x"]},
            {"id": "g", "text": "  keep  inner   spacing  "},
        ),
    )
    records, invalid = read_records([path])
    assert records == [Record("g", "keep  inner   spacing", {}, f"{path}:7")]
    assert reasons(invalid) == [
        ("1", "missing text field 'text'"),
        ("2", "empty text"),
        ("3", "empty text"),
        ("4", "text field 'text' must be a string, got integer"),
        ("5", "text field 'text' must be a string, got null"),
        ("6", "text field 'text' must be a string, got array"),
    ]


def test_multiple_text_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        jsonl(
            {"id": "1", "title": " Title ", "text": " Body. "},
            {"id": "2", "title": "", "text": "only body"},
            {"id": "3", "text": "no title key"},
            {"id": "4", "title": "only title"},
            {"id": "5", "title": "", "text": "  "},
            {"id": "6"},
            {"id": "7", "title": 3, "text": "x"},
            {"id": "8", "title": "T", "text": "B", "year": 1999},
        ),
    )
    records, invalid = read_records([path], text_fields=("title", "text"))
    assert [(r.external_id, r.text) for r in records] == [
        ("1", "Title Body."),
        ("2", "only body"),
        ("3", "no title key"),
        ("4", "only title"),
        ("8", "T B"),
    ]
    assert records[-1].metadata == {"year": 1999}  # text fields are not metadata
    assert reasons(invalid) == [
        ("5", "empty text"),
        ("6", "missing text fields 'title', 'text'"),
        ("7", "text field 'title' must be a string, got integer"),
    ]
    # Order of text_fields decides the join order.
    records, _ = read_records([path], text_fields=("text", "title"))
    assert records[0].text == "Body. Title"


# ---------------------------------------------------------------- metadata


def test_metadata_default_flattens_nested_object(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        jsonl(
            {"id": "a", "text": "x", "metadata": {"version": "1.0"}},
            {"id": "b", "text": "x", "metadata": {"version": "1.0", "k": 1}, "lang": "en"},
            {"id": "c", "text": "x", "metadata": {"lang": "nested"}, "lang": "top"},
            {"id": "d", "text": "x", "metadata": "not an object"},
            {"id": "e", "text": "x", "tags": ["a", "b"], "n": None, "nested": {"z": 1}},
        ),
    )
    records, invalid = read_records([path])
    assert invalid == []
    assert [r.metadata for r in records] == [
        {"version": "1.0"},
        {"version": "1.0", "k": 1, "lang": "en"},
        {"lang": "top"},  # an explicit top-level field wins over a nested one
        {"metadata": "not an object"},
        {"tags": ["a", "b"], "n": None, "nested": {"z": 1}},
    ]


def test_metadata_selection(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        jsonl(
            {"id": "a", "text": "x", "lang": "en", "year": 2001, "secret": "s"},
            {"id": "b", "text": "x", "lang": "de"},
            {"id": "c", "text": "x", "metadata": {"lang": "fr", "other": 1}},
        ),
    )
    records, _ = read_records([path], metadata_fields=["lang", "year"])
    assert [r.metadata for r in records] == [
        {"lang": "en", "year": 2001},
        {"lang": "de"},  # missing ones are simply absent
        {"lang": "fr"},  # looked up inside a nested "metadata" object too
    ]
    records, _ = read_records([path], metadata_fields=[])
    assert all(r.metadata == {} for r in records)


# ---------------------------------------------------------------- json


def test_json_array_line_numbers(tmp_path: Path) -> None:
    content = (
        "[\n"  # 1
        '  {"id": "a", "text": "one"},\n'  # 2
        "  {\n"  # 3
        '    "id": "b",\n'  # 4
        '    "text": "two",\n'  # 5
        '    "tag": "x"\n'  # 6
        "  },\n"  # 7
        "\n"  # 8
        '  {"id": "c", "text": "three"}, {"id": "d",\n'  # 9
        '   "text": "four"},\n'  # 10
        "  [1, 2],\n"  # 11
        '  "str",\n'  # 12
        '  {"id": "e"},\n'  # 13
        '  {"id": "f", "text": NaN},\n'  # 14
        '  {"id": "g", "text": "after"}\n'  # 15
        "]\n"
    )
    path = write(tmp_path, "docs.json", content)
    records, invalid = read_records([path])
    assert [(r.external_id, r.source) for r in records] == [
        ("a", f"{path}:2"),
        ("b", f"{path}:3"),
        ("c", f"{path}:9"),
        ("d", f"{path}:9"),
        ("g", f"{path}:15"),
    ]
    assert records[1].metadata == {"tag": "x"}
    assert reasons(invalid) == [
        ("11", "expected a JSON object, got array"),
        ("12", "expected a JSON object, got string"),
        ("13", "missing text field 'text'"),
        ("14", "malformed JSON: NaN is not valid JSON"),
    ]


def test_json_empty_array_and_compact(tmp_path: Path) -> None:
    assert read_records([write(tmp_path, "e.json", "  [ ]  \n")]) == ([], [])
    path = write(tmp_path, "c.json", '[{"id":"a","text":"x"},{"id":"b","text":"y"}]')
    records, invalid = read_records([path])
    assert [r.source for r in records] == [f"{path}:1", f"{path}:1"] and invalid == []


_DELIM = "malformed JSON: Expecting ',' delimiter"


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        ('[\n  {"id": "a", "text": "x"},\n  {"id": "b" "text": "y"}\n]\n', "3", f"{_DELIM} (column 14)"),
        ('[\n  {"id": "a", "text": "x"}\n  {"id": "b", "text": "y"}\n]\n', "3", f"{_DELIM} (column 3)"),
        ('[\n  {"id": "a", "text": "x"},\n]\n', "3", "malformed JSON: Expecting value (column 1)"),
        ('[\n  {"id": "a", "text": "x"}\n', "3", f"{_DELIM} (column 1)"),
        ('[{"id": "a", "text": "x"}]\n]\n', "2", "malformed JSON: Extra data (column 1)"),
        ("", "1", "malformed JSON: Expecting value (column 1)"),
        (
            "{\n  oops",
            "2",
            "malformed JSON: Expecting property name enclosed in double quotes (column 3)",
        ),
    ],
)
def test_json_malformed_is_one_invalid(
    tmp_path: Path, content: str, line: str, reason: str
) -> None:
    path = write(tmp_path, "docs.json", content)
    records, invalid = read_records([path])
    assert records == []
    assert reasons(invalid) == [(line, reason)]


@pytest.mark.parametrize(
    ("content", "kind"),
    [('{"id": "a", "text": "x"}', "object"), ("42", "integer"), ('"s"', "string")],
)
def test_json_top_level_not_array_raises(tmp_path: Path, content: str, kind: str) -> None:
    path = write(tmp_path, "docs.json", content)
    expected = f"expected a JSON array of objects at the top level, got {kind}"
    with pytest.raises(ValueError, match=expected):
        read_records([path])


# ---------------------------------------------------------------- csv


def test_csv_basic_and_multiline(tmp_path: Path) -> None:
    content = (
        "id,title,text,lang\r\n"  # 1
        "1,T1,plain,en\r\n"  # 2
        '2,"T2","a quoted\r\nbody over\r\nthree lines",\r\n'  # 3-5
        "3,,only text,de\r\n"  # 6
        "\r\n"  # 7: blank
        '4,"has ""quotes"", commas",x,\r\n'  # 8
        "5,,,fr\r\n"  # 9: empty text
        ",,missing id,\r\n"  # 10
        "6,x,y,z,extra\r\n"  # 11
        "7,short\r\n"  # 12: text column absent
        "8,T8,after\r\n"  # 13
    )
    path = write(tmp_path, "docs.csv", content)
    records, invalid = read_records([path], text_fields=("title", "text"))
    assert [(r.external_id, r.text, r.metadata, r.source.rsplit(":", 1)[1]) for r in records] == [
        ("1", "T1 plain", {"lang": "en"}, "2"),
        ("2", "T2 a quoted\r\nbody over\r\nthree lines", {"lang": ""}, "3"),
        ("3", "only text", {"lang": "de"}, "6"),
        ("4", 'has "quotes", commas x', {"lang": ""}, "8"),
        ("7", "short", {}, "12"),
        ("8", "T8 after", {}, "13"),
    ]
    assert reasons(invalid) == [
        ("9", "empty text"),
        ("10", "empty id"),
        ("11", "row has 5 fields but the header has 4"),
    ]


def test_csv_values_written_as_numbers_are_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.csv", "id,text,price,qty,zip,note,big\n1,x,9.99,3,02134,,12345678901234567\n")
    records, _ = read_records([path])
    # A code with a leading zero, and a number a double cannot hold, stay strings.
    assert records[0].metadata == {"price": 9.99, "qty": 3, "zip": "02134", "note": "", "big": "12345678901234567"}
    records, _ = read_records([path], csv_types=["text"])
    assert records[0].metadata == {"price": "9.99", "qty": "3", "zip": "02134", "note": "", "big": "12345678901234567"}
    records, _ = read_records([path], metadata_fields=["note", "absent"])
    assert records[0].metadata == {"note": ""}


def test_csv_column_types(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.csv", "id,text,zip,flag,qty,spec\n1,x,02134,yes,7,\"{\"\"a\"\": [1]}\"\n2,y,1,no,seven,null\n")
    records, invalid = read_records([path], csv_types=["zip:text,flag:bool", "qty:int", "spec:json"])
    assert records == [Record("1", "x", {"zip": "02134", "flag": True, "qty": 7, "spec": {"a": [1]}}, f"{path}:2")]
    assert reasons(invalid) == [("3", "column 'qty': 'seven' is not an integer (--csv-types qty:int)")]
    with pytest.raises(ValueError, match="--csv-types: 'price:money'"):
        read_records([path], csv_types=["price:money"])


def test_csv_unterminated_quote_counts_every_line_it_swallows(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.csv", 'id,text\n1,fine\n2,"never closed\n3,three\n\n4,four\n')
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["1"]
    assert reasons(invalid)[0][0] == "3" and invalid[0].reason.startswith("malformed CSV: ")
    assert reasons(invalid)[1:] == [
        ("4", "not read: inside the quoted field that starts at line 3, which is never closed"),
        ("6", "not read: inside the quoted field that starts at line 3, which is never closed"),
    ]


def test_csv_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.csv", "doc,body\n1,x\n")
    records, invalid = read_records([path])
    assert records == []
    assert reasons(invalid) == [("2", "missing id field 'id'")]
    path = write(tmp_path, "docs2.csv", "id,body\n1,x\n")
    _, invalid = read_records([path])
    assert reasons(invalid) == [("2", "missing text field 'text'")]


def test_csv_header_only_and_empty(tmp_path: Path) -> None:
    assert read_records([write(tmp_path, "h.csv", "id,text\n")]) == ([], [])
    assert read_records([write(tmp_path, "e.csv", "")]) == ([], [])


def test_csv_duplicate_header_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeats column 'text'"):
        read_records([write(tmp_path, "d.csv", "id,text,text\n1,a,b\n")])


def test_csv_malformed_quote(tmp_path: Path) -> None:
    path = write(tmp_path, "docs.csv", 'id,text\n1,"bad" quote\n2,good\n')
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["2"]
    assert len(invalid) == 1 and invalid[0].source == f"{path}:2"
    assert invalid[0].reason.startswith("malformed CSV: ")


# ---------------------------------------------------------------- text


def test_text_format(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", "  first line  \r\n\n\t\nsecond line\nfirst line\nlast")
    records, invalid = read_records([path])
    assert invalid == []
    # Two identical lines give one record; it keeps the first position and
    # takes the later source.
    assert records == [
        Record(txt_id("first line"), "first line", {}, f"{path}:5"),
        Record(txt_id("second line"), "second line", {}, f"{path}:4"),
        Record(txt_id("last"), "last", {}, f"{path}:6"),
    ]


def test_text_ids_are_stable(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.md", "alpha\nbeta\n")
    first, _ = read_records([path])
    second, _ = read_records([path])
    assert [r.external_id for r in first] == [r.external_id for r in second]
    assert first[0].external_id == "txt-" + hashlib.sha256(b"alpha").hexdigest()[:16]
    assert len(first[0].external_id) == 20


def test_text_ignores_metadata_fields_and_field_names(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", '{"id": "x", "text": "looks like json"}\n')
    records, invalid = read_records([path], metadata_fields=["lang"], id_field="doc", text_fields=("body",))
    assert invalid == []
    assert records[0].text == '{"id": "x", "text": "looks like json"}'
    assert records[0].metadata == {}


# ---------------------------------------------------------------- encoding


def test_bom_is_stripped(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    jl = write(tmp_path, "a.jsonl", bom + jsonl({"id": "a", "text": "x"}).encode())
    js = write(tmp_path, "b.json", bom + b'[{"id": "b", "text": "y"}]')
    cs = write(tmp_path, "c.csv", bom + b"id,text\nc,z\n")
    tx = write(tmp_path, "d.txt", bom + b"hello\n")
    records, invalid = read_records([jl, js, cs, tx])
    assert invalid == []
    assert [(r.external_id, r.text) for r in records] == [
        ("a", "x"),
        ("b", "y"),
        ("c", "z"),
        (txt_id("hello"), "hello"),
    ]


def test_non_utf8_jsonl(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.jsonl",
        b'{"id": "a", "text": "ok"}\n'
        b'{"id": "b", "text": "caf\xe9"}\n'
        b'{"id": "c", "text": "fine \xc3\xa9"}\n',
    )
    records, invalid = read_records([path])
    assert [(r.external_id, r.text) for r in records] == [("a", "ok"), ("c", "fine é")]
    assert reasons(invalid) == [("2", "text is not valid UTF-8 (byte 0xe9 at column 25)")]


def test_non_utf8_column_counts_bytes(tmp_path: Path) -> None:
    # "é" is two bytes, so the bad byte after it is at byte column 3.
    path = write(tmp_path, "notes.txt", b"ok\n" + "é".encode() + b"\xff\nnext\n")
    records, invalid = read_records([path])
    assert [r.text for r in records] == ["ok", "next"]
    assert reasons(invalid) == [("2", "text is not valid UTF-8 (byte 0xff at column 3)")]


def test_encoded_surrogate_is_not_utf8(tmp_path: Path) -> None:
    path = write(tmp_path, "notes.txt", b"a\xed\xa0\x80b\n")
    _, invalid = read_records([path])
    assert reasons(invalid) == [("1", "text is not valid UTF-8 (byte 0xed at column 2)")]


def test_non_utf8_csv(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.csv",
        b'id,text\n1,good\n2,b\x80d\n3,"multi\nline \xfe here"\n4,also good\n',
    )
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["1", "4"]
    assert reasons(invalid) == [
        ("3", "text is not valid UTF-8 (byte 0x80 at column 4)"),
        ("4", "text is not valid UTF-8 (byte 0xfe at line 5, column 6)"),
    ]
    assert records[1].source == f"{path}:6"


def test_non_utf8_csv_header_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="header"):
        read_records([write(tmp_path, "docs.csv", b"id,t\xffxt\n1,a\n")])


def test_non_utf8_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "docs.json",
        b'[\n  {"id": "a", "text": "ok"},\n  {"id": "b",\n   "text": "b\xe9d"},\n  {"id": "c", "text": "ok"}\n]\n',
    )
    records, invalid = read_records([path])
    assert [r.external_id for r in records] == ["a", "c"]
    assert reasons(invalid) == [("3", "text is not valid UTF-8 (byte 0xe9 at line 4, column 14)")]
    # A bad byte outside any string breaks the file's structure.
    path = write(tmp_path, "broken.json", b'[\n  {"id": "a", "text": "ok"},\n  \xff\n]\n')
    records, invalid = read_records([path])
    assert records == []
    assert reasons(invalid) == [("3", "text is not valid UTF-8 (byte 0xff at column 3)")]


# ---------------------------------------------------------------- stdin


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'  \n[{"id": "a", "text": "from json"}]', [("a", "from json")]),
        (b'\n{"id": "b", "text": "from jsonl"}\n{"id": "c", "text": "x"}\n', [("b", "from jsonl"), ("c", "x")]),
        (b"plain words\n", [(txt_id("plain words"), "plain words")]),
        (b'\xef\xbb\xbf{"id": "d", "text": "bom"}\n', [("d", "bom")]),
        (b"", []),
    ],
)
def test_stdin_sniffing(data: bytes, expected: list[tuple[str, str]]) -> None:
    records, invalid = read_records(["-"], stdin=io.BytesIO(data))
    assert invalid == []
    assert [(r.external_id, r.text) for r in records] == expected
    assert all(r.source.startswith("<stdin>:") for r in records)


def test_stdin_explicit_format_and_source_name() -> None:
    records, invalid = read_records(["-"], fmt="csv", stdin=io.BytesIO(b"id,text\n1,x\n2,\n"))
    assert records == [Record("1", "x", {}, "<stdin>:2")]
    assert invalid == [Invalid("<stdin>:3", "empty text")]
    assert str(invalid[0]) == "<stdin>:3: empty text"


def test_fmt_overrides_every_source(tmp_path: Path) -> None:
    a = write(tmp_path, "a.txt", jsonl({"id": "a", "text": "x"}))
    b = write(tmp_path, "b.csv", jsonl({"id": "b", "text": "y"}))
    records, invalid = read_records([a, b], fmt="jsonl")
    assert [r.external_id for r in records] == ["a", "b"] and invalid == []


# ---------------------------------------------------------------- duplicates


def test_duplicate_same_text_later_wins(tmp_path: Path) -> None:
    a = write(tmp_path, "a.jsonl", jsonl({"id": "x", "text": "same", "v": 1}, {"id": "y", "text": "other"}))
    b = write(tmp_path, "b.jsonl", jsonl({"id": "x", "text": "same", "v": 2}))
    records, invalid = read_records([a, b])
    assert invalid == []
    assert records == [
        Record("x", "same", {"v": 2}, f"{b}:1"),
        Record("y", "other", {}, f"{a}:2"),
    ]


def test_duplicate_int_and_string_id_are_the_same(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", jsonl({"id": 5, "text": "t"}, {"id": "5", "text": "t"}))
    records, invalid = read_records([path])
    assert len(records) == 1 and invalid == []


def test_duplicate_different_text_drops_both(tmp_path: Path) -> None:
    a = write(tmp_path, "a.jsonl", jsonl({"id": "x", "text": "one"}, {"id": "y", "text": "keep"}))
    b = write(tmp_path, "b.jsonl", jsonl({"id": "z", "text": "keep too"}, {"id": "x", "text": "two"}))
    records, invalid = read_records([a, b])
    assert [r.external_id for r in records] == ["y", "z"]
    assert invalid == [
        Invalid(f"{a}:1", f"id 'x' appears again with different text at {b}:2"),
        Invalid(f"{b}:2", f"id 'x' appears again with different text (first at {a}:1)"),
    ]


def test_duplicate_third_occurrence_is_also_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.jsonl",
        jsonl({"id": "x", "text": "one"}, {"id": "x", "text": "two"}, {"id": "x", "text": "one"}),
    )
    records, invalid = read_records([path])
    assert records == []
    assert [i.source for i in invalid] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert invalid[2].reason == f"id 'x' was already used with different texts (first at {path}:1)"


def test_invalid_records_do_not_take_part_in_dedup(tmp_path: Path) -> None:
    path = write(tmp_path, "a.jsonl", jsonl({"id": "x", "text": ""}, {"id": "x", "text": "real"}))
    records, invalid = read_records([path])
    assert [r.text for r in records] == ["real"]
    assert reasons(invalid) == [("1", "empty text")]


def test_mixed_formats_keep_order(tmp_path: Path) -> None:
    a = write(tmp_path, "a.csv", "id,text\n1,one\n")
    b = write(tmp_path, "b.json", '[{"id": "2", "text": "two"}]')
    c = write(tmp_path, "c.txt", "three\n")
    records, _ = read_records([c, a, b])
    assert [r.text for r in records] == ["three", "one", "two"]


# ---------------------------------------------------------------- real data


@pytest.mark.skipif(not CRANFIELD.exists(), reason="Cranfield corpus not available")
def test_cranfield_corpus() -> None:
    records, invalid = read_records([str(CRANFIELD)], id_field="_id", text_fields=("title", "text"))
    assert len(records) == 1398
    assert [(i.source, i.reason) for i in invalid] == [
        (f"{CRANFIELD}:471", "empty text"),
        (f"{CRANFIELD}:995", "empty text"),
    ]
    ids = {r.external_id for r in records}
    assert "471" not in ids and "995" not in ids and "1" in ids


def test_sample_catalog() -> None:
    records, invalid = read_records([str(SAMPLE)])
    assert invalid == []
    assert 45 <= len(records) <= 60
    by_id = {r.external_id: r for r in records}
    assert by_id["p001"].text == "A comfortable and durable cotton t-shirt, perfect for everyday wear."
    assert by_id["p002"].text == "High-performance running shoes with advanced cushioning for marathon runners."
    assert by_id["p003"].text == "A stylish and lightweight laptop bag, designed to protect your electronics."
    assert by_id["p004"].text == "Soft and breathable linen pants, ideal for warm weather and casual outings."
    for r in records:
        assert set(r.metadata) == {"category", "price"}
        assert isinstance(r.metadata["category"], str)
        assert isinstance(r.metadata["price"], float)


# ---------------------------------------------------------------- round trip

_ID = st.one_of(
    st.text(min_size=1, max_size=12).filter(lambda s: s.strip() != ""),
    st.integers(min_value=-(10**6), max_value=10**6).map(str),
)
_TEXT = st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s and s != "")
_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=6).filter(
    lambda k: k not in {"id", "text", "metadata"}
)
_JSON_VALUE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
_DOCS = st.lists(
    st.tuples(_ID, _TEXT, st.dictionaries(_KEY, _JSON_VALUE, max_size=3)),
    max_size=8,
    unique_by=lambda d: d[0],
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=_DOCS, nested=st.booleans())
def test_round_trip_json_formats(
    tmp_path: Path, docs: list[tuple[str, str, dict[str, Any]]], nested: bool
) -> None:
    objs = [
        {"id": i, "text": t, "metadata": m} if nested else {"id": i, "text": t, **m}
        for i, t, m in docs
    ]
    jl = write(tmp_path, "rt.jsonl", jsonl(*objs))
    js = write(tmp_path, "rt.json", json.dumps(objs, indent=2))
    expected = [(i, t, m) for i, t, m in docs]
    for path in (jl, js):
        records, invalid = read_records([path])
        assert invalid == []
        assert [(r.external_id, r.text, r.metadata) for r in records] == expected


# csv cannot carry NUL characters.
_NO_NUL = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))
_CSV_TEXT = st.text(alphabet=_NO_NUL, min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s != ""
)
_CSV_VALUE = st.text(alphabet=_NO_NUL, max_size=10)
_CSV_DOCS = st.lists(
    st.tuples(
        _ID.filter(lambda s: "\x00" not in s),
        _CSV_TEXT,
        st.fixed_dictionaries({"a": _CSV_VALUE, "b": _CSV_VALUE}),
    ),
    max_size=8,
    unique_by=lambda d: d[0],
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(docs=_CSV_DOCS)
def test_round_trip_csv(tmp_path: Path, docs: list[tuple[str, str, dict[str, str]]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["id", "text", "a", "b"])
    for i, t, m in docs:
        writer.writerow([i, t, m["a"], m["b"]])
    path = write(tmp_path, "rt.csv", buf.getvalue())
    records, invalid = read_records([path], csv_types=["text"])
    assert invalid == []
    assert [(r.external_id, r.text, r.metadata) for r in records] == docs
