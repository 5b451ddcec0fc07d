"""Read documents from JSONL, JSON, CSV and plain-text files and validate them, streaming.

A file is never held in memory whole: a :class:`RecordScan` reads its sources twice, a
record at a time. The first pass (:meth:`RecordScan.check`) validates every record and
finds ids given more than once, keeping only ids and digests; the second
(:meth:`RecordScan.batches`) reads them again and hands out the valid records in
batches, so a caller can check every record before writing any and still hold only one
batch of texts at a time. Standard input is spooled to a temporary file for the second
pass.

Every source is read as bytes and decoded here, so that a bad byte spoils only the line
or record that holds it instead of the whole file. Bad records never raise: each one
becomes an :class:`Invalid` naming ``path:line`` and the reason, so a caller can index
the good records and show the user every problem at once. Only a problem with a whole
source (missing file, a directory, unknown format, a JSON file whose top level is not an
array, an unusable CSV header) raises ValueError or OSError, during the first pass.

The rules a document must follow live in :mod:`retrieval.documents` (shared with the HTTP
service and the Python API); a record larger than ``max_document_bytes`` is refused
without being parsed when its line alone is far larger than any valid record can be.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from retrieval.documents import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    Deduplicator,
    DocumentError,
    Invalid,
    check_document,
    json_type,
    size_text,
)

__all__ = ["CSV_TYPES", "FORMATS", "Invalid", "Record", "RecordScan", "detect_format", "read_queries", "read_records"]

FORMATS = ("jsonl", "json", "csv", "text")
# What --csv-types takes for a column (COLUMN:TYPE), besides the modes infer and text.
CSV_TYPES = ("text", "int", "float", "number", "bool", "json")

_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}

# The bundled sample catalog (`retrieve ingest --sample`), shipped as package data.
SAMPLE_CATALOG = Path(__file__).resolve().parent / "sample" / "products.jsonl"

_BOM = b"\xef\xbb\xbf"
_STDIN_NAME = "<stdin>"

# Files are decoded with "surrogateescape", which turns each byte that is not
# valid UTF-8 into one code point U+DC80..U+DCFF.  A valid UTF-8 file cannot
# produce those code points (the strict decoder rejects encoded surrogates), so
# finding one in the decoded text pinpoints a bad byte.
_BAD_BYTE = re.compile("[\udc80-\udcff]")
# JSON's own whitespace; str.isspace() would accept more than the parser does.
_JSON_WS = re.compile(r"[ \t\n\r]*")
# A number as --csv-types infer reads one: JSON's grammar, at most 15 significant digits
# (so it survives a double), and no leading zero on a longer integer part ("02134" is a
# code, not a number).
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,15})?(?:[eE][+-]?[0-9]{1,3})?")

READ_CHUNK = 1 << 20  # bytes read at a time from a JSON array


def line_limit(max_bytes: int) -> int:
    """The longest line (or JSON array element) read at all: a valid record's text takes
    at most 6 bytes per byte of its limit as escaped JSON (\\uXXXX), and its metadata
    as much again. Longer ones are refused unread, so a huge line costs no memory."""
    return 12 * max_bytes + (1 << 20)


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


# --------------------------------------------------------------------------
# the scan: two passes over every source


@dataclass
class _Source:
    name: str  # as given ("<stdin>" for -)
    fmt: str
    path: Path | None  # None: the spooled standard input
    spool: IO[bytes] | None = None
    # A JSON file with a syntax error: its one refusal (None: none; unset: not read yet).
    broken: Invalid | None | bool = False

    def open(self) -> AbstractContextManager[BinaryIO]:
        if self.spool is not None:
            self.spool.seek(0)
            return nullcontext(self.spool)  # type: ignore[arg-type]  # kept open for the second pass
        assert self.path is not None
        return open(self.path, "rb")


class RecordScan:
    """Every record of ``sources``, validated in a first pass and handed out in a second.

    Args:
        sources: file paths; ``"-"`` reads standard input (named ``<stdin>``).
        fmt: one of :data:`FORMATS` for every source; ``None`` picks the format from
            each file's extension and sniffs standard input (``[`` -> json, ``{`` ->
            jsonl, anything else -> text).
        id_field: field holding the record id (a non-empty string or an integer).
        text_fields: fields whose non-empty values, stripped, are joined with one
            space to form the text (``("title", "text")`` for BEIR).
        metadata_fields: fields to keep as metadata; ``None`` keeps every field other
            than the id and text fields, with the keys of an object field named
            ``metadata`` lifted to the top level. Ignored for text input.
        stdin: binary stream used for ``"-"``; defaults to ``sys.stdin.buffer``.
        max_bytes: ``max_document_bytes``: the largest text (and metadata) accepted.
        csv_types: how CSV values become metadata: ``infer`` (the default: a value
            written as a number is a number), ``text`` (every value a string), and
            ``COLUMN:TYPE`` entries with TYPE one of :data:`CSV_TYPES` for single columns.

    An id seen twice with the same text keeps one record (the later one's metadata and
    source, the earlier position); an id seen twice with different texts drops both,
    since either could be the one the user meant.

    Raises (when constructed, or from the first pass):
        FileNotFoundError: a source does not exist.
        ValueError: unknown ``fmt`` or CSV type, a format that cannot be detected, a
            source that is a directory, a CSV header that cannot be used, or a JSON file
            whose top level is valid JSON but not an array.
    """

    def __init__(
        self,
        sources: Sequence[str],
        *,
        fmt: str | None = None,
        id_field: str = "id",
        text_fields: Sequence[str] = ("text",),
        metadata_fields: Sequence[str] | None = None,
        stdin: BinaryIO | None = None,
        max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
        csv_types: Sequence[str] = ("infer",),
    ) -> None:
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        # A bare string would otherwise be taken as a sequence of one-letter fields.
        fields = (text_fields,) if isinstance(text_fields, str) else tuple(text_fields)
        if not fields:
            raise ValueError("text_fields must name at least one field")
        if id_field in fields:
            raise ValueError(f"id field {id_field!r} cannot also be a text field")
        selected = None if metadata_fields is None else tuple(metadata_fields)
        self.max_bytes = max_bytes
        self.limit = line_limit(max_bytes)
        self._builder = _Builder(id_field, fields, selected, max_bytes)
        self._csv = _CsvTypes.parse(csv_types)
        self._stdin = stdin
        # Every source is resolved before any is parsed, so that a whole-source error
        # is raised before the caller has half a result.
        self._sources: list[_Source] = []
        for src in sources:
            if src == "-":
                self._sources.append(self._spool_stdin(fmt))
                continue
            path = Path(src)
            if path.is_dir():
                raise ValueError(f"{src} is a directory, not a file")
            src_fmt = fmt or detect_format(src)
            if not path.exists():
                raise FileNotFoundError(errno.ENOENT, "no such file", src)
            self._sources.append(_Source(src, src_fmt, path))
        self._dedup: Deduplicator | None = None

    def _spool_stdin(self, fmt: str | None) -> _Source:
        stream = self._stdin if self._stdin is not None else sys.stdin.buffer
        spool = tempfile.SpooledTemporaryFile(max_size=16 << 20)
        shutil.copyfileobj(stream, spool, READ_CHUNK)
        spool.seek(0)
        head = spool.read(4096)
        return _Source(_STDIN_NAME, fmt or _sniff(head), None, spool)

    def close(self) -> None:
        for source in self._sources:
            if source.spool is not None:
                source.spool.close()

    def __enter__(self) -> RecordScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- parsing --------------------------------------------------------------------

    def _items(self) -> Iterator[Record | Invalid]:
        """Every record and every refusal of every source, in file order."""
        for source in self._sources:
            with source.open() as stream:
                if source.fmt == "jsonl":
                    yield from _parse_jsonl(stream, source.name, self._builder, self.limit)
                elif source.fmt == "json":
                    if source.broken is False:
                        # A JSON file is one value: after a syntax error nothing in it
                        # can be trusted, so a broken file is one refusal and no record.
                        # Find out first, without keeping what is read.
                        source.broken = next((i for i in _parse_json(stream, source.name, self._builder, self.limit)
                                              if isinstance(i, _Broken)), None)
                        stream.seek(0)
                    if isinstance(source.broken, Invalid):
                        yield source.broken
                    else:
                        yield from _parse_json(stream, source.name, self._builder, self.limit)
                elif source.fmt == "csv":
                    yield from _parse_csv(stream, source.name, self._builder, self.limit, self._csv)
                else:
                    yield from _parse_text(stream, source.name, self._builder, self.limit)

    # -- pass 1 ---------------------------------------------------------------------

    def check(self) -> list[Invalid]:
        """Read everything once: every refusal, in the order met (ids given twice with
        different texts included). Keeps only ids and digests."""
        if self._dedup is None:
            dedup = Deduplicator()
            for ordinal, item in enumerate(self._items()):
                dedup.observe(ordinal, item)
            self._dedup = dedup
        return self._dedup.invalid

    @property
    def valid(self) -> int:
        """How many records :meth:`records` gives (after :meth:`check`)."""
        return self._dedup.distinct if self._dedup is not None else 0

    # -- pass 2 ---------------------------------------------------------------------

    def records(self) -> Iterator[Record]:
        """The valid records, each id once, in first-seen order (reads everything again)."""
        self.check()
        assert self._dedup is not None
        for ordinal, item in enumerate(self._items()):
            kept = self._dedup.keep(ordinal, item)
            if kept is not None:
                yield kept

    def batches(self, size: int = 1000, max_bytes: int = 8 << 20) -> Iterator[list[Record]]:
        """:meth:`records` in lists of at most ``size`` records and about ``max_bytes`` of text."""
        batch: list[Record] = []
        held = 0
        for record in self.records():
            batch.append(record)
            held += len(record.text)
            if len(batch) >= size or held >= max_bytes:
                yield batch
                batch, held = [], 0
        if batch:
            yield batch


def read_records(
    sources: Sequence[str],
    *,
    fmt: str | None = None,
    id_field: str = "id",
    text_fields: Sequence[str] = ("text",),
    metadata_fields: Sequence[str] | None = None,
    stdin: BinaryIO | None = None,
    max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    csv_types: Sequence[str] = ("infer",),
) -> tuple[list[Record], list[Invalid]]:
    """Every valid record (in a list) and every refusal of ``sources``: a
    :class:`RecordScan` read whole. For small inputs; ingest streams instead."""
    with RecordScan(sources, fmt=fmt, id_field=id_field, text_fields=text_fields, metadata_fields=metadata_fields,
                    stdin=stdin, max_bytes=max_bytes, csv_types=csv_types) as scan:
        invalid = scan.check()
        return list(scan.records()), invalid


# --------------------------------------------------------------------------
# decoding helpers


def _decode(data: bytes) -> str:
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


class _Broken(Invalid):
    """A JSON file's syntax error: the file's only refusal."""


class _NonStandardJSONError(ValueError):
    """NaN/Infinity: Python accepts them, other JSON readers and writers do not."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardJSONError(f"malformed JSON: {name} is not valid JSON")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)
# Only used to find where a rejected element ends, so reading can go on.
_LENIENT = json.JSONDecoder()


def _raw_lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """(line number, the line's bytes with its line break) for every line, a BOM at the
    start dropped; a line longer than ``limit`` bytes is skipped unread and given as its
    length in bytes instead."""
    number = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        if len(raw) > limit and not raw.endswith(b"\n"):
            size = len(raw)
            while True:  # the rest of the line, read and dropped a chunk at a time
                more = stream.readline(READ_CHUNK)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            yield number, size
            continue
        yield number, raw


def _lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, str | int]]:
    """:func:`_raw_lines` decoded, without their line breaks."""
    for number, raw in _raw_lines(stream, limit):
        if isinstance(raw, int):
            yield number, raw
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield number, _decode(raw)


def _too_long(size: int, limit: int, what: str = "line") -> str:
    return (f"{what} is {size_text(size)}, more than any document within max_document_bytes can take "
            f"(lines are read up to {size_text(limit)}); not read")


# --------------------------------------------------------------------------
# turning one parsed object into a Record


class _Builder:
    def __init__(
        self, id_field: str, text_fields: tuple[str, ...], metadata_fields: tuple[str, ...] | None, max_bytes: int
    ) -> None:
        self.id_field = id_field
        self.text_fields = text_fields
        self.metadata_fields = metadata_fields
        self.max_bytes = max_bytes

    def build(self, obj: dict[str, Any], source: str) -> Record | Invalid:
        raw_id = obj.get(self.id_field, _MISSING)
        if raw_id is _MISSING:
            return Invalid(source, f"missing id field {self.id_field!r}")

        parts: list[str] = []
        present = False
        for name in self.text_fields:
            if name not in obj:
                continue
            present = True
            value = obj[name]
            if not isinstance(value, str):
                return Invalid(source, f"text field {name!r} must be a string, got {json_type(value)}")
            if value.strip():
                parts.append(value.strip())
        if not present:
            names = ", ".join(repr(n) for n in self.text_fields)
            noun = "field" if len(self.text_fields) == 1 else "fields"
            return Invalid(source, f"missing text {noun} {names}")
        try:
            external_id, text, metadata = check_document(raw_id, " ".join(parts), self._metadata(obj),
                                                         max_bytes=self.max_bytes)
        except DocumentError as exc:
            return Invalid(source, str(exc))
        return Record(external_id, text, metadata, source)

    def text_record(self, body: str, source: str) -> Record | Invalid:
        # Content-derived ids keep re-indexing the same file idempotent.
        digest = hashlib.sha256(body.encode("utf-8")).hexdigest()[:16]
        try:
            external_id, text, metadata = check_document(f"txt-{digest}", body, {}, max_bytes=self.max_bytes)
        except DocumentError as exc:
            return Invalid(source, str(exc))
        return Record(external_id, text, metadata, source)

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


def _parse_jsonl(stream: BinaryIO, name: str, builder: _Builder, limit: int) -> Iterator[Record | Invalid]:
    # Lines are split on "\n" only: str.splitlines() would also split on U+2028, U+0085
    # and friends, which may legitimately appear inside a JSON string.
    for number, line in _lines(stream, limit):
        source = f"{name}:{number}"
        if isinstance(line, int):
            yield Invalid(source, _too_long(line, limit))
            continue
        if not line.strip():
            continue
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
            yield Invalid(source, f"expected a JSON object, got {json_type(value)}")
            continue
        yield builder.build(value, source)


def _parse_text(stream: BinaryIO, name: str, builder: _Builder, limit: int) -> Iterator[Record | Invalid]:
    for number, line in _lines(stream, limit):
        source = f"{name}:{number}"
        if isinstance(line, int):
            yield Invalid(source, _too_long(line, limit))
            continue
        body = line.strip()
        if not body:
            continue
        bad = _BAD_BYTE.search(line)
        if bad:
            yield Invalid(source, _utf8_reason(line, bad.start()))
            continue
        yield builder.text_record(body, source)


class _Buffer:
    """A window of a decoded JSON file that grows at the end as the parser needs more and
    is cut at the front at line starts, with the line number of its first line."""

    def __init__(self, stream: BinaryIO) -> None:
        import codecs

        self.stream = stream
        self.decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.line = 1  # line number of self.text[0]
        self.eof = False
        self.started = False

    def more(self) -> bool:
        """Read another chunk; False at the end of the file."""
        if self.eof:
            return False
        data = self.stream.read(READ_CHUNK)
        if not self.started:
            self.started = True
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if not data:
            self.eof = True
            self.text += self.decoder.decode(b"", final=True)
            return False
        self.text += self.decoder.decode(data)
        return True

    def drop_before(self, pos: int) -> int:
        """Forget the text before the line that holds ``pos``; returns the new position."""
        cut = self.text.rfind("\n", 0, pos) + 1
        if cut:
            self.line += self.text.count("\n", 0, cut)
            self.text = self.text[cut:]
        return pos - cut

    def line_of(self, pos: int) -> int:
        return self.line + self.text.count("\n", 0, pos)

    def column_of(self, pos: int) -> int:
        return pos - self.text.rfind("\n", 0, pos)

    def utf8_reason(self, pos: int, record_line: int) -> str:
        line_no = self.line_of(pos)
        start = self.text.rfind("\n", 0, pos) + 1
        end = self.text.find("\n", pos)
        line = self.text[start : end if end >= 0 else len(self.text)]
        return _utf8_reason(line, pos - start, None if line_no == record_line else line_no)


def _parse_json(stream: BinaryIO, name: str, builder: _Builder, limit: int) -> Iterator[Record | Invalid]:
    buf = _Buffer(stream)

    def malformed(msg: str, pos: int) -> Invalid:
        if pos < len(buf.text) and _BAD_BYTE.match(buf.text, pos):
            line = buf.line_of(pos)
            return _Broken(f"{name}:{line}", buf.utf8_reason(pos, line))
        return _Broken(f"{name}:{buf.line_of(pos)}", f"malformed JSON: {msg} (column {buf.column_of(pos)})")

    def skip_ws(pos: int) -> int:
        while True:
            pos = _skip_ws(buf.text, pos)
            if pos < len(buf.text) or not buf.more():
                return pos

    pos = skip_ws(0)
    if pos == len(buf.text) or buf.text[pos] != "[":
        # Not an array: read it whole (within the limit) to tell the user what it is.
        while len(buf.text) <= limit and buf.more():
            pass
        if len(buf.text) > limit:
            raise ValueError(f"{name}: expected a JSON array of objects at the top level")
        try:
            top = _LENIENT.decode(buf.text)
        except json.JSONDecodeError as err:
            yield malformed(err.msg, err.pos)
            return
        raise ValueError(f"{name}: expected a JSON array of objects at the top level, got {json_type(top)}")

    pos = skip_ws(pos + 1)
    if buf.text.startswith("]", pos):
        pos += 1
    else:
        while True:
            pos = buf.drop_before(pos)
            start = pos
            value: Any = None
            end = start
            while True:
                try:
                    value, end = _STRICT.raw_decode(buf.text, start)
                    complete = end < len(buf.text) or buf.eof
                    error: json.JSONDecodeError | None = None
                except json.JSONDecodeError as err:
                    complete, error = buf.eof, err
                except _NonStandardJSONError as err:
                    try:
                        _, end = _LENIENT.raw_decode(buf.text, start)
                        value, complete, error = err, end < len(buf.text) or buf.eof, None
                    except json.JSONDecodeError as err2:
                        complete, error = buf.eof, err2
                except RecursionError:
                    yield _Broken(f"{name}:{buf.line_of(start)}", "malformed JSON: nested too deeply")
                    return
                if complete:
                    break
                # A value cut off by the end of what was read so far: read on, unless the
                # element is already larger than any valid record.
                if len(buf.text) - start > limit:
                    yield _Broken(f"{name}:{buf.line_of(start)}", _too_long(len(buf.text) - start, limit, "element"))
                    return
                buf.more()
            if error is not None:
                yield malformed(error.msg, error.pos)
                return
            line = buf.line_of(start)
            source = f"{name}:{line}"
            bad = _BAD_BYTE.search(buf.text, start, end)
            if bad:
                yield Invalid(source, buf.utf8_reason(bad.start(), line))
            elif isinstance(value, _NonStandardJSONError):
                yield Invalid(source, str(value))
            elif not isinstance(value, dict):
                yield Invalid(source, f"expected a JSON object, got {json_type(value)}")
            else:
                yield builder.build(value, source)
            pos = skip_ws(end)
            if buf.text.startswith(",", pos):
                pos = skip_ws(pos + 1)
                continue
            if buf.text.startswith("]", pos):
                pos += 1
                break
            yield malformed("Expecting ',' delimiter", pos)
            return
    pos = skip_ws(pos)
    if pos != len(buf.text):
        yield malformed("Extra data", pos)


@dataclass(frozen=True)
class _CsvTypes:
    """How CSV cells become metadata values: a mode for every column and per-column types."""

    mode: str = "infer"  # infer | text
    columns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> _CsvTypes:
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


def _parse_csv(stream: BinaryIO, name: str, builder: _Builder, limit: int,
               types: _CsvTypes) -> Iterator[Record | Invalid]:
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
        for number, raw in _raw_lines(stream, limit):
            if isinstance(raw, int):
                oversized.append((number, raw))
                raw = b"\n"  # the row is refused below; the reader goes on with the next line
            line = _decode(raw)
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
    bad = _BAD_BYTE.search(header_line)
    if bad:
        raise ValueError(f"{name}:1: CSV header {_utf8_reason(header_line, bad.start())}")
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
            yield Invalid(source, _too_long(oversized[0][1], limit))
            continue
        if not any(value.strip() for value in row):
            continue  # blank line, or a row of empty cells
        for offset, (number, physical) in enumerate(consumed):
            bad = _BAD_BYTE.search(physical)
            if bad:
                line_no = number if offset else None
                reason = _utf8_reason(physical.rstrip("\r\n"), bad.start(), line_no)
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

