"""What a search returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str  # the document's external id
    score: float  # cosine similarity
    text: str
    metadata: dict[str, Any]
    doc_id: int  # the internal id (also the FAISS id)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}
