"""Documents as users hand them in and get them back, and the one place their rules live.

Every way in calls :func:`check_document`: the CLI's file readers (:mod:`retrieval.readers`),
the HTTP service and the Python API (:meth:`retrieval.Retriever.ingest`), so a document
one of them refuses is refused by all three, with the same reason:

* the id is a non-empty string (an integer is taken as its decimal string) of at most
  :data:`MAX_ID_CHARS` characters;
* the text is a non-empty string of valid Unicode, at most ``max_document_bytes`` in
  UTF-8 (the setting; 1 MiB by default);
* the metadata is a JSON object: string keys, values that JSON can hold (no NaN or
  infinity, which SQLite's JSON functions and PostgreSQL's jsonb refuse), nested at most
  :data:`MAX_METADATA_DEPTH` deep, and at most ``max_document_bytes`` as JSON.

A document handed to the Python API may carry its own ``vector`` (a store whose vectors
come from the caller, :mod:`retrieval.embed.external`): a non-empty sequence of finite
numbers, not all zero (:func:`check_vector`; the store checks its dimension).

Within one batch, an id given twice with the same text is stored once (the later
metadata wins); an id given twice with different texts is refused both times, since
either could be the one meant (:class:`Deduplicator`).

This module imports nothing heavy: the readers and `retrieve search --server` use it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# documents.external_id is VARCHAR(512): PostgreSQL refuses longer ids.
MAX_ID_CHARS = 512
# Nesting of metadata objects and arrays (deeper would only test the JSON parsers' stacks).
MAX_METADATA_DEPTH = 64
DEFAULT_MAX_DOCUMENT_BYTES = 1 << 20


@dataclass(frozen=True)
class Document:
    """A stored document: what :meth:`retrieval.Retriever.get` returns."""

    id: str  # the external id
    text: str
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "metadata": self.metadata}


class DocumentError(ValueError):
    """Why one document is refused (the message names the field; the caller adds where)."""


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinity (metadata a store took before they were
    refused; `retrieve verify` names such documents) replaced by None, inside dicts,
    lists and tuples too: what standard JSON can carry, where a reader meets ``NaN``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def json_type(value: object) -> str:
    """The JSON name of a value's type, as messages use it."""
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
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def size_text(n: int) -> str:
    """Bytes for a message: 512 B, 12.3 KB, 1.4 MB (decimal units, as people read sizes)."""
    if n < 1000:
        return f"{n} B"
    if n < 1_000_000:
        return f"{n / 1000:.1f} KB"
    return f"{n / 1_000_000:.1f} MB"


def check_id(value: Any) -> str:
    """The external id of ``value``: a non-empty string, or an integer's decimal string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DocumentError(f"id must be a string or integer, got {json_type(value)}")
    external_id = str(value)
    if not external_id.strip():
        raise DocumentError("empty id")
    if len(external_id) > MAX_ID_CHARS:
        raise DocumentError(f"id has {len(external_id)} characters; the limit is {MAX_ID_CHARS}")
    _check_unicode(external_id, "id")
    return external_id


def check_text(value: Any, max_bytes: int) -> str:
    """A document's text: a non-empty string of valid Unicode within ``max_bytes`` (UTF-8)."""
    if not isinstance(value, str):
        raise DocumentError(f"text must be a string, got {json_type(value)}")
    if not value.strip():
        raise DocumentError("empty text")
    n = _check_unicode(value, "text")
    if n > max_bytes:
        raise DocumentError(f"text is {size_text(n)}; the limit is {size_text(max_bytes)} (max_document_bytes)")
    return value


def check_metadata(value: Any, max_bytes: int) -> dict[str, Any]:
    """A document's metadata: a JSON object (None means none) that JSON and both databases hold."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise DocumentError(f"metadata must be a JSON object, got {json_type(value)}")
    _check_json(value, "metadata", 0)
    n = len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    if n > max_bytes:
        raise DocumentError(f"metadata is {size_text(n)} as JSON; the limit is {size_text(max_bytes)} "
                              "(max_document_bytes)")
    return dict(value)


def check_vector(value: Any) -> tuple[float, ...]:
    """A caller's vector: a non-empty sequence (a list, a tuple, a numpy array) of finite
    numbers, not all zero (a zero vector has no direction to compare)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # a numpy array (or scalar, refused below)
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise DocumentError(f"vector must be an array of numbers, got {json_type(value)}")
    if not value:
        raise DocumentError("vector is empty")
    for i, x in enumerate(value):
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise DocumentError(f"vector[{i}] must be a number, got {json_type(x)}")
        if not math.isfinite(x):
            raise DocumentError(f"vector[{i}] is {x!r}; a vector holds finite numbers only")
    if not any(value):
        raise DocumentError("vector is all zeros: it has no direction")
    return tuple(float(x) for x in value)


def check_document(external_id: Any, text: Any, metadata: Any, *,
                   max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES) -> tuple[str, str, dict[str, Any]]:
    """(id, text, metadata) checked by every rule above; raises :class:`DocumentError`."""
    return check_id(external_id), check_text(text, max_bytes), check_metadata(metadata, max_bytes)


def _check_unicode(value: str, what: str) -> int:
    """UTF-8 bytes of ``value``; a lone surrogate (no encoder or database takes one) is refused."""
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise DocumentError(f"{what} is not valid Unicode (a lone surrogate at character {exc.start + 1})") from None


def _check_json(value: Any, path: str, depth: int) -> None:
    if depth > MAX_METADATA_DEPTH:
        raise DocumentError(f"{path}: nested more than {MAX_METADATA_DEPTH} levels deep")
    if value is None or isinstance(value, (bool, int, str)):
        if isinstance(value, str):
            _check_unicode(value, path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DocumentError(f"{path}: {value!r} is not valid JSON (NaN and infinities cannot be stored)")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DocumentError(f"{path}: keys must be strings, got {json_type(key)} {key!r}")
            _check_unicode(key, path)
            _check_json(item, f"{path}.{key}", depth + 1)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    raise DocumentError(f"{path}: a {type(value).__name__} is not a JSON value")


# -- one batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class Checked:
    """A valid document and where it came from (``file:line`` or ``documents[i]``)."""

    external_id: str
    text: str
    metadata: dict[str, Any]
    source: str
    vector: tuple[float, ...] | None = None  # the caller's (see :func:`check_vector`)


@dataclass(frozen=True)
class Invalid:
    """A refused document, where it came from and why."""

    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}"


class Deduplicator:
    """The batch rule for ids given more than once (see the module docstring), in two
    passes that hold no text: :meth:`observe` every item in order (keeping ids and
    digests, and the latest repeat of an id given twice with one text), then ask
    :meth:`keep` of each item in the same order which to store, and with what."""

    def __init__(self) -> None:
        self.invalid: list[Invalid] = []
        # id -> [ordinal of its first occurrence, digest of its text, conflicting?]
        self._seen: dict[str, list[Any]] = {}
        self._sources: dict[str, str] = {}  # where an id was first seen (for messages)
        self._repeats: dict[str, Any] = {}  # id -> its latest same-text occurrence
        self.distinct = 0  # ids that will be stored

    def observe(self, ordinal: int, item: Any) -> None:
        """Item ``ordinal`` of the batch: an :class:`Invalid`, or a valid document with
        ``external_id``, ``text`` and ``source``."""
        if isinstance(item, Invalid):
            self.invalid.append(item)
            return
        key = item.external_id
        digest = hashlib.sha256(item.text.encode("utf-8")).digest()[:16]
        entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [ordinal, digest, False]
            self._sources[key] = item.source
            self.distinct += 1
            return
        if entry[2]:
            self.invalid.append(Invalid(item.source, f"id {key!r} was already used with different texts "
                                                     f"(first at {self._sources[key]})"))
            return
        if entry[1] == digest:
            self._repeats[key] = item  # the same document again: its first position, the newer metadata
            return
        entry[2] = True
        self.distinct -= 1
        earlier = self._repeats.pop(key, None)
        first = earlier.source if earlier is not None else self._sources[key]
        self._sources[key] = first
        self.invalid.append(Invalid(first, f"id {key!r} appears again with different text at {item.source}"))
        self.invalid.append(Invalid(item.source, f"id {key!r} appears again with different text (first at {first})"))

    def keep(self, ordinal: int, item: Any) -> Any | None:
        """What to store for item ``ordinal`` (observed before): the document (or its
        latest same-text repeat) at its first occurrence, else None."""
        if isinstance(item, Invalid):
            return None
        entry = self._seen.get(item.external_id)
        if entry is None or entry[2] or entry[0] != ordinal:
            return None
        return self._repeats.get(item.external_id, item)


_FIELDS = ("id", "text", "metadata")
_VECTOR_FIELDS = (*_FIELDS, "vector")


def check_batch(documents: Iterable[Any], *, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
                what: str = "documents", vectors: bool = False) -> tuple[list[Checked], list[Invalid]]:
    """Check documents handed in by a program (the Python API, an HTTP body): dicts with
    ``id``, ``text`` and optional ``metadata``, or objects with those attributes
    (:class:`Document`, a reader's record). Problems are named ``documents[i]``. With
    ``vectors`` (the Python API), a document may carry a ``vector`` too.

    A bare string or bytes (which would be read as a sequence of one-letter documents) and
    an item that is no document at all are programming errors: :class:`TypeError`.
    """
    if isinstance(documents, (str, bytes, Mapping)):
        raise TypeError(f"{what} must be a sequence of documents (dicts with id, text and metadata), "
                        f"not a single {json_type(documents)}; wrap one document in a list")
    items: list[Checked | Invalid] = []
    for i, doc in enumerate(documents):
        source = f"{what}[{i}]"
        if isinstance(doc, Mapping):
            unknown = [k for k in doc if k not in (_VECTOR_FIELDS if vectors else _FIELDS)]
            if unknown:
                items.append(Invalid(source, f"unknown field {unknown[0]!r}; a document has id, text and metadata"
                                             + (" (and a vector)" if vectors else "")))
                continue
            raw = (doc.get("id"), doc.get("text"), doc.get("metadata"))
            vector = doc.get("vector")
        elif hasattr(doc, "text") and (hasattr(doc, "external_id") or hasattr(doc, "id")):
            raw = (getattr(doc, "external_id", None) or getattr(doc, "id", None), doc.text, getattr(doc, "metadata", None))
            vector = getattr(doc, "vector", None) if vectors else None
        else:
            raise TypeError(f"{source} must be a document (a dict with id, text and metadata), got a "
                            f"{json_type(doc)}: {doc!r:.60}")
        try:
            external_id, text, metadata = check_document(*raw, max_bytes=max_bytes)
            checked_vector = None if vector is None else check_vector(vector)
        except DocumentError as exc:
            label = raw[0] if isinstance(raw[0], (str, int)) and not isinstance(raw[0], bool) else None
            items.append(Invalid(source if label is None else f"{source} (id {str(label)[:80]!r})", str(exc)))
            continue
        items.append(Checked(external_id, text, metadata, source, checked_vector))
    dedup = Deduplicator()
    for i, item in enumerate(items):
        dedup.observe(i, item)
    kept = [dedup.keep(i, item) for i, item in enumerate(items)]
    return [k for k in kept if k is not None], dedup.invalid


def check_ids(external_ids: Any, what: str = "ids") -> list[str]:
    """A sequence of external ids as a list of strings (an integer is its decimal string).

    A bare string is refused (:class:`TypeError`): iterating it would name one-letter ids.
    """
    if isinstance(external_ids, (str, bytes)) or not isinstance(external_ids, Iterable):
        raise TypeError(f"{what} must be a sequence of ids, not a {json_type(external_ids)}; "
                        f"for one id, pass a list: [{external_ids!r}]")
    out = []
    for value in external_ids:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"{what}: an id is a string (or an integer), got {json_type(value)} {value!r:.60}")
        out.append(str(value))
    return out


__all__ = ["DEFAULT_MAX_DOCUMENT_BYTES", "MAX_ID_CHARS", "Checked", "Deduplicator", "Document", "DocumentError",
           "Invalid", "check_batch", "check_document", "check_ids", "check_metadata", "check_text", "check_vector",
           "finite", "json_type",
           "size_text"]
