"""What a search returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result.

    ``score`` is the cosine similarity in dense mode, the keyword rank in keyword mode
    (BM25 on SQLite, ts_rank_cd on PostgreSQL) and the fused score in hybrid mode; hybrid
    results carry each list's rank (1-based, None where the document was not in that
    list), keyword and hybrid ones a ``snippet`` of the text with the matched terms at the ``highlights`` (start, end) offsets.
    """

    id: str  # the document's external id
    score: float
    text: str
    metadata: dict[str, Any]
    doc_id: int  # the internal id (also the FAISS id)
    mode: str = "dense"
    dense_rank: int | None = None
    keyword_rank: int | None = None
    snippet: str | None = None
    highlights: tuple[tuple[int, int], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata,
                               "mode": self.mode}
        if self.mode == "hybrid":
            out["dense_rank"] = self.dense_rank
            out["keyword_rank"] = self.keyword_rank
        if self.snippet is not None:
            out["snippet"] = self.snippet
            out["highlights"] = [list(h) for h in self.highlights]
        return out
