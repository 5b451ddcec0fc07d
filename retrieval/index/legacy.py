"""The single-file format (format 1): one ``versions/<name>/index.faiss`` per version. A
store of that format is converted once into one exact segment, without re-embedding."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import IndexCorruptError
from retrieval.index import faisslib


class LegacyIndexFound(Exception):  # noqa: N818 - a signal to convert, not an error
    """CURRENT names a version of the single-file format: convert it (no re-embedding)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"index version {name} is in the single-file format")
        self.name = name


def legacy_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def read_legacy(root: Path, name: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(manifest, ids, vectors) of a format-1 version, checked against its manifest."""
    faiss = faisslib.load()
    folder = root / "versions" / name
    meta = legacy_manifest(folder)
    if meta is None:
        raise IndexCorruptError(f"index version {name}: manifest is unreadable")
    try:
        data = (folder / "index.faiss").read_bytes()
    except FileNotFoundError as exc:
        raise IndexCorruptError(f"index version {name} is incomplete: index.faiss is missing") from exc
    if len(data) != meta.get("faiss_bytes") or hashlib.sha256(data).hexdigest() != meta.get("faiss_sha256"):
        raise IndexCorruptError(f"index version {name}: index.faiss does not match its checksum (corrupt)")
    index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    ids = faiss.vector_to_array(index.id_map).astype(np.int64)
    vectors = index.index.reconstruct_n(0, index.ntotal) if index.ntotal else np.empty((0, index.d), np.float32)
    return meta, ids, vectors
