"""Reading files as bytes, a line (or a JSON array element) at a time: decoding with the
bad bytes located, lines far beyond any valid record refused unread, and the JSONL,
plain-text and JSON array formats."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

from retrieval.documents import Invalid, json_type, size_text
from retrieval.readers.records import Builder, Record

BOM = b"\xef\xbb\xbf"
# Files are decoded with "surrogateescape", which turns each byte that is not
# valid UTF-8 into one code point U+DC80..U+DCFF.  A valid UTF-8 file cannot
# produce those code points (the strict decoder rejects encoded surrogates), so
# finding one in the decoded text pinpoints a bad byte.
BAD_BYTE = re.compile("[\udc80-\udcff]")
# JSON's own whitespace; str.isspace() would accept more than the parser does.
_JSON_WS = re.compile(r"[ \t\n\r]*")
READ_CHUNK = 1 << 20  # bytes read at a time from a JSON array


def _skip_json_ws(text: str, pos: int) -> int:
    """The position of the first non-whitespace character at or after ``pos``."""
    match = _JSON_WS.match(text, pos)
    return match.end() if match else pos


def decode(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def sniff(data: bytes) -> str:
    body = data[len(BOM) :] if data.startswith(BOM) else data
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        return "jsonl"
    return "text"


def utf8_reason(line: str, index: int, line_no: int | None = None) -> str:
    """Describe the bad byte at ``line[index]``; columns count bytes, from 1.

    ``line_no`` is given when the bad byte is not on the line where the record
    starts, so the user can still find it.
    """
    byte = ord(line[index]) - 0xDC00
    column = len(line[:index].encode("utf-8", "surrogateescape")) + 1
    where = f"column {column}" if line_no is None else f"line {line_no}, column {column}"
    return f"text is not valid UTF-8 (byte 0x{byte:02x} at {where})"


class Broken(Invalid):
    """A JSON file's syntax error: the file's only refusal."""


class _NonStandardJSONError(ValueError):
    """NaN/Infinity: Python accepts them, other JSON readers and writers do not."""


def _reject_constant(name: str) -> Any:
    raise _NonStandardJSONError(f"malformed JSON: {name} is not valid JSON")


_STRICT = json.JSONDecoder(parse_constant=_reject_constant)
# Only used to find where a rejected element ends, so reading can go on.
_LENIENT = json.JSONDecoder()


def raw_lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """(line number, the line's bytes with its line break) for every line, a BOM at the
    start dropped; a line longer than ``limit`` bytes is skipped unread and given as its
    length in bytes instead."""
    number = 0
    while True:
        raw = stream.readline(limit + 1)
        if not raw:
            return
        number += 1
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
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


def lines(stream: BinaryIO, limit: int) -> Iterator[tuple[int, str | int]]:
    """:func:`raw_lines` decoded, without their line breaks."""
    for number, raw in raw_lines(stream, limit):
        if isinstance(raw, int):
            yield number, raw
            continue
        if raw.endswith(b"\n"):
            raw = raw[:-1]
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        yield number, decode(raw)


def too_long(size: int, limit: int, what: str = "line") -> str:
    return (f"{what} is {size_text(size)}, more than any document within max_document_bytes can take "
            f"(lines are read up to {size_text(limit)}); not read")


def parse_jsonl(stream: BinaryIO, name: str, builder: Builder, limit: int) -> Iterator[Record | Invalid]:
    # Lines are split on "\n" only: str.splitlines() would also split on U+2028, U+0085
    # and friends, which may legitimately appear inside a JSON string.
    for number, line in lines(stream, limit):
        source = f"{name}:{number}"
        if isinstance(line, int):
            yield Invalid(source, too_long(line, limit))
            continue
        if not line.strip():
            continue
        bad = BAD_BYTE.search(line)
        if bad:
            yield Invalid(source, utf8_reason(line, bad.start()))
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


def parse_text(stream: BinaryIO, name: str, builder: Builder, limit: int) -> Iterator[Record | Invalid]:
    for number, line in lines(stream, limit):
        source = f"{name}:{number}"
        if isinstance(line, int):
            yield Invalid(source, too_long(line, limit))
            continue
        body = line.strip()
        if not body:
            continue
        bad = BAD_BYTE.search(line)
        if bad:
            yield Invalid(source, utf8_reason(line, bad.start()))
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
            if data.startswith(BOM):
                data = data[len(BOM) :]
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
        return utf8_reason(line, pos - start, None if line_no == record_line else line_no)


def parse_json(stream: BinaryIO, name: str, builder: Builder, limit: int) -> Iterator[Record | Invalid]:
    buf = _Buffer(stream)

    def malformed(msg: str, pos: int) -> Invalid:
        if pos < len(buf.text) and BAD_BYTE.match(buf.text, pos):
            line = buf.line_of(pos)
            return Broken(f"{name}:{line}", buf.utf8_reason(pos, line))
        return Broken(f"{name}:{buf.line_of(pos)}", f"malformed JSON: {msg} (column {buf.column_of(pos)})")

    def skip_ws(pos: int) -> int:
        while True:
            pos = _skip_json_ws(buf.text, pos)
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
                    yield Broken(f"{name}:{buf.line_of(start)}", "malformed JSON: nested too deeply")
                    return
                if complete:
                    break
                # A value cut off by the end of what was read so far: read on, unless the
                # element is already larger than any valid record.
                if len(buf.text) - start > limit:
                    yield Broken(f"{name}:{buf.line_of(start)}", too_long(len(buf.text) - start, limit, "element"))
                    return
                buf.more()
            if error is not None:
                yield malformed(error.msg, error.pos)
                return
            line = buf.line_of(start)
            source = f"{name}:{line}"
            bad = BAD_BYTE.search(buf.text, start, end)
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
