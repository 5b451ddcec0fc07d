"""retrieval: semantic search with a database as the source of truth and FAISS as a
derived, versioned index.

    from retrieval import Retriever
    with Retriever.open("data") as r:
        r.ingest([{"id": "p1", "text": "Running shoes with cushioning"}])
        print(r.search("shoes for jogging", k=1))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retrieval.config import Settings, load_settings
from retrieval.errors import RetrievalError

if TYPE_CHECKING:
    from retrieval.retriever import Hit, Retriever

__all__ = ["Retriever", "Settings", "Hit", "RetrievalError", "load_settings"]


def __getattr__(name: str) -> Any:
    # Keep `import retrieval` light: the retriever pulls in SQLAlchemy and numpy.
    if name in ("Retriever", "Hit"):
        from retrieval import retriever

        return getattr(retriever, name)
    raise AttributeError(name)
