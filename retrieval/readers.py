"""Read documents from JSONL, JSON, CSV and plain-text files and validate them.

Every source is read as bytes and decoded here, so that a bad byte spoils only
the line or record that holds it instead of the whole file.  Bad records never
raise: each one becomes an :class:`Invalid` naming ``path:line`` and the reason,
so a caller can index the good records and show the user every problem at once.
Only a problem with a whole source (missing file, unknown format, a JSON file
whose top level is not an array) raises.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FORMATS", "Invalid", "Record", "detect_format", "read_records"]

FORMATS = ("jsonl", "json", "csv", "text")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}

_BOM = b"\xef\xbb\xbf"
_STDIN_NAME = "<stdin>"

# Files are decoded with "surrogateescape", which turns each byte that is not
# valid UTF-8 into one code point U+DC80..U+DCFF.  A valid UTF-8 file cannot
# produce those code points (the strict decoder rejects encoded surrogates), so
# finding one in the decoded text pinpoints a bad byte.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
# JSON's own whitespace; str.isspace() would accept more than the parser does.
_JSON_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int) -> int:
    """The position of the first non-whitespace character at or after ``pos``."""
    match = _JSON_WS.match(text, pos)
    return match.end() if match else pos


@dataclass(frozen=True)
class Record:
    """One valid document: its id, the text to embed, and metadata to return."""

    external_id: str
    text: str
    metadata: dict[str, Any]
    source: str  # "path:line" where the record starts


@dataclass(frozen=True)
class Invalid:
    """One record that could not be read, and why."""

    source: str  # "path:line"
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


def detect_format(path: str) -> str:
    """Return the input format implied by the extension of ``path``.

    ``.jsonl``/``.ndjson`` -> ``jsonl``, ``.json`` -> ``json``, ``.csv`` ->
    ``csv``, ``.txt``/``.text``/``.md`` -> ``text`` (case-insensitive).

    Raises:
        ValueError: the extension is none of these.
    """
    fmt = _EXTENSIONS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {path} from its extension; "
            "pass --format jsonl|json|csv|text"
        )
    return fmt


def read_records(
    sources: Sequence[str],
    *,
    fmt: str | None = None,
    id_field: str = "id",
    text_fields: Sequence[str] = ("text",),
    metadata_fields: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
) -> tuple[list[Record], list[Invalid]]:
    """Read and validate the records of every source, in order.

    Args:
        sources: file paths; ``"-"`` reads standard input (named ``<stdin>``).
        fmt: one of :data:`FORMATS` for every source; ``None`` picks the format
            from each file's extension and sniffs standard input (``[`` ->
            json, ``{`` -> jsonl, anything else -> text).
        id_field: field holding the record id (a non-empty string or an integer).
        text_fields: fields whose non-empty values, stripped, are joined with
            one space to form the text (``("title", "text")`` for BEIR).
        metadata_fields: fields to keep as metadata; ``None`` keeps every field
            other than the id and text fields, with the keys of an object field
            named ``metadata`` lifted to the top level.  Ignored for text input.
        stdin: binary stream used for ``"-"``; defaults to ``sys.stdin.buffer``.

    Returns:
        The valid records in input order, and one :class:`Invalid` per bad
        record in the order met.  An id seen twice with the same text keeps one
        record (the later one's metadata and source, the earlier position); an
        id seen twice with different texts drops both, since either could be
        the one the user meant.

    Raises:
        FileNotFoundError: a source does not exist.
        ValueError: unknown ``fmt``, a format that cannot be detected, a source
            that is a directory, a CSV header that cannot be used, or a JSON
            file whose top level is valid JSON but not an array.
    """
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    # A bare string would otherwise be taken as a sequence of one-letter fields.
    fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
    if not fields:
        raise ValueError("text_fields must name at least one field")
    if id_field in fields:
        raise ValueError(f"id field {id_field!r} cannot also be a text field")
    selected = None if metadata_fields is None else tuple(metadata_fields)
    builder = _Builder(id_field, fields, selected)

    # Resolve every format and read every file before parsing any, so that a
    # whole-source error is raised before the caller has half a result.
    loaded: list[tuple[str, str, bytes]] = []
    for src in sources:
        if src == "-":
            stream = stdin if stdin is not None else sys.stdin.buffer
            data = stream.read()
            loaded.append((_STDIN_NAME, fmt or _sniff(data), data))
        else:
            src_fmt = fmt or detect_format(src)
            path = Path(src)
            if path.is_dir():
                raise ValueError(f"{src} is a directory, not a file")
            loaded.append((src, src_fmt, path.read_bytes()))

    dedup = _Dedup()
    for name, src_fmt, data in loaded:
        text = _decode(data)
        if src_fmt == "jsonl":
            items = _parse_jsonl(text, name, builder)
        elif src_fmt == "json":
            items = iter(_parse_json(text, name, builder))
        elif src_fmt == "csv":
            items = _parse_csv(text, name, builder)
        else:
            items = _parse_text(text, name)
        for item in items:
            dedup.add(item)
    return dedup.result()


# --------------------------------------------------------------------------
# decoding helpers


def _decode(data: bytes) -> str:
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    return data.decode("utf-8", "surrogateescape")


def _sniff(data: bytes) -> str:
    body = data[len(_BOM) :] if data.startswith(_BOM) else data
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    return "text"


def _utf8_reason(line: str, index: int, line_no: int | None = None) -> str:
    """Describe the bad byte at ``line[index]``; columns count bytes, from 1.

    ``line_no`` is given when the bad byte is not on the line where the record
    starts, so the user can still find it.
    """
    byte = ord(line[index]) - 0xDC00
    column = len(line[:index].encode("utf-8", "surrogateescape")) + 1
    where = f"column {column}" if line_no is None else f"line {line_no}, column {column}"
    return f"text is not valid UTF-8 (byte 0x{byte:02x} at {where})"


def _json_type(value: object) -> str:
    # bool before int: bool is a subclass of int.
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


class _NonStandardJSONError(ValueError):
    """NaN/Infinity: Python accepts them, other JSON readers and writers do not."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardJSONError(f"malformed JSON: {name} is not valid JSON")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)
# Only used to find where a rejected element ends, so reading can go on.
_LENIENT = json.JSONDecoder()


# --------------------------------------------------------------------------
# turning one parsed object into a Record


class _Builder:
    def __init__(
        self, id_field: str, text_fields: tuple[str, ...], metadata_fields: tuple[str, ...] | None
    ) -> None:
        self.id_field = id_field
        self.text_fields = text_fields
        self.metadata_fields = metadata_fields

    def build(self, obj: dict[str, Any], source: str) -> Record | Invalid:
        raw_id = obj.get(self.id_field, _MISSING)
        if raw_id is _MISSING:
            return Invalid(source, f"missing id field {self.id_field!r}")
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            return Invalid(source, f"id must be a string or integer, got {_json_type(raw_id)}")
        external_id = str(raw_id)
        if not external_id.strip():
            return Invalid(source, "empty id")

        parts: list[str] = []
        present = False
        for name in self.text_fields:
            if name not in obj:
                continue
            present = True
            value = obj[name]
            if not isinstance(value, str):
                return Invalid(
                    source, f"text field {name!r} must be a string, got {_json_type(value)}"
                )
            if value.strip():
                parts.append(value.strip())
        if not present:
            names = ", ".join(repr(n) for n in self.text_fields)
            noun = "field" if len(self.text_fields) == 1 else "fields"
            return Invalid(source, f"missing text {noun} {names}")
        if not parts:
            return Invalid(source, "empty text")

        return Record(external_id, " ".join(parts), self._metadata(obj), source)

    def _metadata(self, obj: dict[str, Any]) -> dict[str, Any]:
        nested = obj.get("metadata")
        if self.metadata_fields is None:
            skip = {self.id_field, *self.text_fields}
            meta: dict[str, Any] = {}
            # Catalog files nest metadata under "metadata"; users expect those
            # keys themselves, not a one-key dict.  Top-level fields are added
            # afterwards so an explicit field wins over a nested one.
            if isinstance(nested, dict) and "metadata" not in skip:
                meta.update(nested)
            for key, value in obj.items():
                if key in skip or (key == "metadata" and isinstance(value, dict)):
                    continue
                meta[key] = value
            return meta
        selected: dict[str, Any] = {}
        for key in self.metadata_fields:
            if key in obj:
                selected[key] = obj[key]
            elif isinstance(nested, dict) and key in nested:
                # Lets --metadata-fields pick keys out of a nested catalog object.
                selected[key] = nested[key]
        return selected


_MISSING = object()


# --------------------------------------------------------------------------
# format parsers; each yields Records and Invalids in file order


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # Split on "\n" only: str.splitlines() would also split on U+2028, U+0085
    # and friends, which may legitimately appear inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line[:-1] if line.endswith("\r") else line


def _parse_jsonl(text: str, name: str, builder: _Builder) -> Iterator[Record | Invalid]:
    for number, line in _lines(text):
        if not line.strip():
            continue
        source = f"{name}:{number}"
        bad = _BAD_BYTE.search(line)
        if bad:
            yield Invalid(source, _utf8_reason(line, bad.start()))
            continue
        try:
            value = _STRICT.decode(line)
        except json.JSONDecodeError as err:
            yield Invalid(source, f"malformed JSON: {err.msg} (column {err.colno})")
            continue
        except _NonStandardJSONError as err:
            yield Invalid(source, str(err))
            continue
        except RecursionError:
            yield Invalid(source, "malformed JSON: nested too deeply")
            continue
        if not isinstance(value, dict):
            yield Invalid(source, f"expected a JSON object, got {_json_type(value)}")
            continue
        yield builder.build(value, source)


def _parse_text(text: str, name: str) -> Iterator[Record | Invalid]:
    for number, line in _lines(text):
        body = line.strip()
        if not body:
            continue
        source = f"{name}:{number}"
        bad = _BAD_BYTE.search(line)
        if bad:
            yield Invalid(source, _utf8_reason(line, bad.start()))
            continue
        # Content-derived ids keep re-indexing the same file idempotent.
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
        yield Record(f"txt-{digest}", body, {}, source)


class _Positions:
    """Maps offsets in a decoded file to 1-based line numbers."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.newlines = [m.start() for m in re.finditer("\n", text)]

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def line_text(self, line_no: int) -> tuple[int, str]:
        start = self.newlines[line_no - 2] + 1 if line_no > 1 else 0
        end = self.newlines[line_no - 1] if line_no - 1 < len(self.newlines) else len(self.text)
        return start, self.text[start:end]

    def utf8_reason(self, pos: int, record_line: int) -> str:
        line_no = self.line_of(pos)
        start, line = self.line_text(line_no)
        return _utf8_reason(line, pos - start, None if line_no == record_line else line_no)


def _parse_json(text: str, name: str, builder: _Builder) -> list[Record | Invalid]:
    pos_map = _Positions(text)

    def malformed(err: json.JSONDecodeError) -> list[Record | Invalid]:
        # A JSON file is one value: after a syntax error nothing in it can be
        # trusted, so the whole file becomes a single Invalid.
        if err.pos < len(text) and _BAD_BYTE.match(text, err.pos):
            line = pos_map.line_of(err.pos)
            return [Invalid(f"{name}:{line}", pos_map.utf8_reason(err.pos, line))]
        return [Invalid(f"{name}:{err.lineno}", f"malformed JSON: {err.msg} (column {err.colno})")]

    pos = _skip_ws(text, 0)
    if pos == len(text) or text[pos] != "[":
        try:
            value = _LENIENT.decode(text)
        except json.JSONDecodeError as err:
            return malformed(err)
        raise ValueError(
            f"{name}: expected a JSON array of objects at the top level, got {_json_type(value)}"
        )

    # (start offset, end offset, value or the reason it was rejected)
    elements: list[tuple[int, int, Any]] = []
    pos = _skip_ws(text, pos + 1)
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            start = pos
            try:
                value, pos = _STRICT.raw_decode(text, pos)
            except json.JSONDecodeError as err:
                return malformed(err)
            except _NonStandardJSONError as err:
                try:
                    _, pos = _LENIENT.raw_decode(text, pos)
                except json.JSONDecodeError as err2:
                    return malformed(err2)
                value = err
            except RecursionError:
                line = pos_map.line_of(start)
                return [Invalid(f"{name}:{line}", "malformed JSON: nested too deeply")]
            elements.append((start, pos, value))
            pos = _skip_ws(text, pos)
            if text.startswith(",", pos):
                pos = _skip_ws(text, pos + 1)
                continue
            if text.startswith("]", pos):
                pos += 1
                break
            return malformed(json.JSONDecodeError("Expecting ',' delimiter", text, pos))
    pos = _skip_ws(text, pos)
    if pos != len(text):
        return malformed(json.JSONDecodeError("Extra data", text, pos))

    out: list[Record | Invalid] = []
    for start, end, value in elements:
        line = pos_map.line_of(start)
        source = f"{name}:{line}"
        bad = _BAD_BYTE.search(text, start, end)
        if bad:
            out.append(Invalid(source, pos_map.utf8_reason(bad.start(), line)))
        elif isinstance(value, _NonStandardJSONError):
            out.append(Invalid(source, str(value)))
        elif not isinstance(value, dict):
            out.append(Invalid(source, f"expected a JSON object, got {_json_type(value)}"))
        else:
            out.append(builder.build(value, source))
    return out


def _parse_csv(text: str, name: str, builder: _Builder) -> Iterator[Record | Invalid]:
    # Documents can be far longer than csv's default 128 KiB field limit.
    if csv.field_size_limit() < 2**31 - 1:
        csv.field_size_limit(2**31 - 1)

    # The reader pulls physical lines one at a time with no lookahead, so the
    # lines taken since the previous row are exactly the current row's lines;
    # keeping them lets a bad byte be located.  newline="" splits lines the way
    # the csv module expects and leaves quoted line breaks intact.
    consumed: list[str] = []

    def feed() -> Iterator[str]:
        for physical in io.StringIO(text, newline=""):
            consumed.append(physical)
            yield physical

    # strict=True turns stray quotes into errors instead of silently merging
    # the rest of the file into one field.
    reader = csv.reader(feed(), strict=True)
    try:
        header_row = next(reader)
    except StopIteration:
        return
    except csv.Error as err:
        raise ValueError(f"{name}:1: cannot read the CSV header: {err}") from None
    header_line = "".join(consumed)
    bad = _BAD_BYTE.search(header_line)
    if bad:
        raise ValueError(f"{name}:1: CSV header {_utf8_reason(header_line, bad.start())}")
    header = [h.strip() for h in header_row]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise ValueError(
            f"{name}:1: CSV header repeats column {', '.join(repr(d) for d in duplicates)}"
        )

    while True:
        consumed.clear()
        start_line = reader.line_num + 1
        source = f"{name}:{start_line}"
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield Invalid(source, f"malformed CSV: {err}")
            continue
        if not any(value.strip() for value in row):
            continue  # blank line, or a row of empty cells
        for offset, physical in enumerate(consumed):
            bad = _BAD_BYTE.search(physical)
            if bad:
                line_no = start_line + offset if offset else None
                reason = _utf8_reason(physical.rstrip("\r\n"), bad.start(), line_no)
                yield Invalid(source, reason)
                break
        else:
            if len(row) > len(header):
                yield Invalid(source, f"row has {len(row)} fields but the header has {len(header)}")
                continue
            # A short row simply lacks its trailing fields, like csv.DictReader
            # without a restval.
            yield builder.build(dict(zip(header, row)), source)


# --------------------------------------------------------------------------
# duplicate ids across all sources


class _Dedup:
    def __init__(self) -> None:
        self.records: list[Record | None] = []
        self.invalid: list[Invalid] = []
        # id -> index into self.records of the live record, or None once the
        # id has been used with two different texts.
        self.slots: dict[str, int | None] = {}
        # id -> source of the record the conflict was first reported against.
        self.first_seen: dict[str, str] = {}

    def add(self, item: Record | Invalid) -> None:
        if isinstance(item, Invalid):
            self.invalid.append(item)
            return
        key = item.external_id
        if key not in self.slots:
            self.slots[key] = len(self.records)
            self.first_seen[key] = item.source
            self.records.append(item)
            return
        index = self.slots[key]
        if index is None:
            self.invalid.append(
                Invalid(
                    item.source,
                    f"id {key!r} was already used with different texts "
                    f"(first at {self.first_seen[key]})",
                )
            )
            return
        earlier = self.records[index]
        assert earlier is not None
        if earlier.text == item.text:
            # Same document again: keep its first position, take the newer
            # metadata and source.
            self.records[index] = item
            return
        self.records[index] = None
        self.slots[key] = None
        self.first_seen[key] = earlier.source
        self.invalid.append(
            Invalid(
                earlier.source, f"id {key!r} appears again with different text at {item.source}"
            )
        )
        self.invalid.append(
            Invalid(
                item.source,
                f"id {key!r} appears again with different text (first at {earlier.source})",
            )
        )

    def result(self) -> tuple[list[Record], list[Invalid]]:
        return [r for r in self.records if r is not None], self.invalid


def read_queries(path: str) -> list[tuple[str, str]]:
    """(id, text) of every query in ``path`` (``-``: stdin): one query per line, or JSONL
    objects with ``id`` (or ``_id``) and ``text``; a plain line's id is its line number.
    Raises ValueError naming the file and line of a malformed one."""
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    out: list[tuple[str, str]] = []
    with stream:
        for lineno, line in enumerate(stream, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{path}:{lineno}: malformed JSON: {exc}") from exc
                qid, text = obj.get("id", obj.get("_id", str(lineno))), obj.get("text")
                if not isinstance(text, str) or not text.strip():
                    raise ValueError(f"{path}:{lineno}: missing or empty text")
                out.append((str(qid), text))
            else:
                out.append((str(lineno), line))
    return out
