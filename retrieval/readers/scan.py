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

import errno
import json
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from retrieval.documents import DEFAULT_MAX_DOCUMENT_BYTES, Deduplicator, Invalid
from retrieval.readers.records import Builder, Record
from retrieval.readers.tabular import CsvTypes, parse_csv
from retrieval.readers.text import READ_CHUNK, Broken, parse_json, parse_jsonl, parse_text, sniff

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

# The bundled sample catalog (`retrieve ingest --sample`), shipped as package data.
SAMPLE_CATALOG = Path(__file__).resolve().parent.parent / "sample" / "products.jsonl"
_STDIN_NAME = "<stdin>"


def line_limit(max_bytes: int) -> int:
    """The longest line (or JSON array element) read at all: a valid record's text takes
    at most 6 bytes per byte of its limit as escaped JSON (\\uXXXX), and its metadata
    as much again. Longer ones are refused unread, so a huge line costs no memory."""
    return 12 * max_bytes + (1 << 20)


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
        self._builder = Builder(id_field, fields, selected, max_bytes)
        self._csv = CsvTypes.parse(csv_types)
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
        return _Source(_STDIN_NAME, fmt or sniff(head), None, spool)

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
                    yield from parse_jsonl(stream, source.name, self._builder, self.limit)
                elif source.fmt == "json":
                    if source.broken is False:
                        # A JSON file is one value: after a syntax error nothing in it
                        # can be trusted, so a broken file is one refusal and no record.
                        # Find out first, without keeping what is read.
                        source.broken = next((i for i in parse_json(stream, source.name, self._builder, self.limit)
                                              if isinstance(i, Broken)), None)
                        stream.seek(0)
                    if isinstance(source.broken, Invalid):
                        yield source.broken
                    else:
                        yield from parse_json(stream, source.name, self._builder, self.limit)
                elif source.fmt == "csv":
                    yield from parse_csv(stream, source.name, self._builder, self.limit, self._csv)
                else:
                    yield from parse_text(stream, source.name, self._builder, self.limit)

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
