"""CSV files: rows with their physical lines kept (so that a bad byte is located and the
lines a broken row swallowed are counted), and cells typed as metadata (``--csv-types``)."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from retrieval.documents import Invalid
from retrieval.readers.records import Builder, Record
from retrieval.readers.text import BAD_BYTE, decode, raw_lines, too_long, utf8_reason

# What --csv-types takes for a column (COLUMN:TYPE), besides the modes infer and text.
CSV_TYPES = ("text", "int", "float", "number", "bool", "json")
# A number as --csv-types infer reads one: JSON's grammar, at most 15 significant digits
# (so it survives a double), and no leading zero on a longer integer part ("02134" is a
# code, not a number).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?(?:[eE][+-]?[0-9]{1,3})?")


@dataclass(frozen=True)
class CsvTypes:
    """How CSV cells become metadata values: a mode for every column and per-column types."""

    mode: str = "infer"  # infer | text
    columns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> CsvTypes:
        mode = "infer"
        columns: dict[str, str] = {}
        for spec in ([specs] if isinstance(specs, str) else specs):
            for part in (p.strip() for p in spec.split(",")):
                if not part:
                    continue
                if part in ("infer", "text"):
                    mode = part
                    continue
                column, sep, kind = part.rpartition(":")
                if not sep or not column or kind not in CSV_TYPES:
                    raise ValueError(f"--csv-types: {part!r} is not infer, text or COLUMN:TYPE with TYPE one of "
                                     f"{', '.join(CSV_TYPES)}")
                columns[column] = kind
        return cls(mode, tuple(columns.items()))

    def convert(self, row: dict[str, str], skip: set[str]) -> dict[str, Any]:
        """The row with its metadata cells typed; raises ValueError naming a bad cell."""
        typed = dict(self.columns)
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key in skip:
                out[key] = value
                continue
            kind = typed.get(key, "number?" if self.mode == "infer" else "text")
            out[key] = _typed(key, value, kind)
        return out


_BOOLS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _typed(column: str, value: str, kind: str) -> Any:
    if kind == "text":
        return value
    if kind == "number?":  # infer: a cell written as a number is one
        if _NUMBER.fullmatch(value) and sum(c.isdigit() for c in value.split("e")[0].split("E")[0]) <= 15:
            return int(value) if re.fullmatch(r"-?[0-9]+", value) else float(value)
        return value
    stripped = value.strip()
    if stripped == "":
        return None
    try:
        if kind == "int":
            return int(stripped)
        if kind == "float":
            return float(stripped)
        if kind == "number":
            return int(stripped) if re.fullmatch(r"[+-]?[0-9]+", stripped) else float(stripped)
        if kind == "bool":
            return _BOOLS[stripped.lower()]
        return json.loads(stripped)
    except (ValueError, KeyError):
        want = {"int": "an integer", "float": "a number", "number": "a number", "bool": "true or false",
                "json": "JSON"}[kind]
        raise ValueError(f"column {column!r}: {value[:40]!r} is not {want} (--csv-types {column}:{kind})") from None


def parse_csv(stream: BinaryIO, name: str, builder: Builder, limit: int,
               types: CsvTypes) -> Iterator[Record | Invalid]:
    # Fields are bounded by the longest line read at all.
    if csv.field_size_limit() < limit:
        csv.field_size_limit(limit)

    # The reader pulls physical lines one at a time with no lookahead, so the
    # lines taken since the previous row are exactly the current row's lines;
    # keeping them lets a bad byte be located and the lines of a broken row be
    # counted. Lines keep their line breaks, as the csv module expects.
    consumed: list[tuple[int, str]] = []
    oversized: list[tuple[int, int]] = []

    def feed() -> Iterator[str]:
        for number, raw in raw_lines(stream, limit):
            if isinstance(raw, int):
                oversized.append((number, raw))
                raw = b"\n"  # the row is refused below; the reader goes on with the next line
            line = decode(raw)
            consumed.append((number, line))
            yield line

    # strict=True turns stray quotes into errors instead of silently merging
    # the rest of the file into one field.
    reader = csv.reader(feed(), strict=True)
    try:
        header_row = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise ValueError(f"{name}:1: cannot read the CSV header: {err}") from None
    header_line = "".join(line for _, line in consumed)
    bad = BAD_BYTE.search(header_line)
    if bad:
        raise ValueError(f"{name}:1: CSV header {utf8_reason(header_line, bad.start())}")
    header = [h.strip() for h in header_row]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ValueError(
            f"{name}:1: CSV header repeats column {', '.join(repr(d) for d in duplicates)}"
        )
    not_metadata = {builder.id_field, *builder.text_fields}

    while True:
        consumed.clear()
        oversized.clear()
        start_line = reader.line_num + 1
        source = f"{name}:{start_line}"
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield Invalid(source, f"malformed CSV: {err}")
            # A quote never closed swallows every line after it into one field: each of
            # those lines is counted as lost, not silently dropped.
            for number, line in consumed[1:]:
                if line.strip():
                    yield Invalid(f"{name}:{number}", f"not read: inside the quoted field that starts at line "
                                                      f"{start_line}, which is never closed")
            continue
        if oversized:
            yield Invalid(source, too_long(oversized[0][1], limit))
            continue
        if not any(value.strip() for value in row):
            continue  # blank line, or a row of empty cells
        for offset, (number, physical) in enumerate(consumed):
            bad = BAD_BYTE.search(physical)
            if bad:
                line_no = number if offset else None
                reason = utf8_reason(physical.rstrip("\r\n"), bad.start(), line_no)
                yield Invalid(source, reason)
                break
        else:
            if len(row) > len(header):
                yield Invalid(source, f"row has {len(row)} fields but the header has {len(header)}")
                continue
            # A short row simply lacks its trailing fields, like csv.DictReader
            # without a restval.
            try:
                cells = types.convert(dict(zip(header, row)), not_metadata)
            except ValueError as err:
                yield Invalid(source, str(err))
                continue
            yield builder.build(cells, source)
