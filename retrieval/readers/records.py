"""One record as the readers give it (:class:`Record`), and how a parsed object becomes
one: its id, text fields joined, metadata chosen, every rule of :mod:`retrieval.documents`
applied (:class:`Builder`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from retrieval.documents import DocumentError, Invalid, check_document, json_type


@dataclass(frozen=True)
class Record:
    """One valid document: its id, the text to embed, and metadata to return."""

    external_id: str
    text: str
    metadata: dict[str, Any]
    source: str  # "path:line" where the record starts


class Builder:
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
