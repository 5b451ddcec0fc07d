"""What the store reads and writes, as plain values: documents as stored and as handed
in, the counts of an upsert, content hashes, and how reads are paged."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

CHUNK = 900  # bound parameters per IN (...): well under every SQLite build's limit
FIRST_PAGE = 64  # documents read before their sizes are known, when pages are bounded by bytes


def content_hash(text_: str) -> str:
    """The content hash of a text: sha256 of its UTF-8 bytes."""
    return hashlib.sha256(text_.encode("utf-8")).hexdigest()


def page_size(mean_chars: float, most: int, max_bytes: int) -> int:
    """Documents per page that hold about ``max_bytes`` of text at ``mean_chars`` each."""
    return max(8, min(most, int(max_bytes / max(1.0, mean_chars))))


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class StoredDocument:
    id: int
    external_id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str | None


@dataclass(frozen=True)
class NewDocument:
    external_id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class UpsertCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0


def stored(row: Any) -> StoredDocument:
    return StoredDocument(row[0], row[1], row[2], row[3] or {}, row[4])
