"""FAISS, imported on first use (``import retrieval`` stays light)."""

from __future__ import annotations

from typing import Any


def load() -> Any:
    import faiss

    return faiss
