"""What a search returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result, from a local store or a remote service alike.

    ``score`` is the cosine similarity in dense mode, the keyword rank in keyword mode
    (BM25 on SQLite, ts_rank_cd on PostgreSQL) and the fused score in hybrid mode; hybrid
    results carry each list's rank (1-based, None where the document was not in that
    list), keyword and hybrid ones a ``snippet`` of the text with the matched terms at the ``highlights`` (start, end) offsets.
    """

    id: str  # the document's external id
    score: float
    text: str
    metadata: dict[str, Any]
    doc_id: int | None = None  # the internal id (also the FAISS id); None from a remote service
    mode: str = "dense"
    dense_rank: int | None = None
    keyword_rank: int | None = None
    snippet: str | None = None
    highlights: tuple[tuple[int, int], ...] = ()
    # Dense and hybrid hits of a document longer than one passage: the passage that scored
    # (ordinal, start and end offsets in ``text``, its text, and of how many).
    passage: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata,
                               "mode": self.mode}
        if self.mode == "hybrid":
            out["dense_rank"] = self.dense_rank
            out["keyword_rank"] = self.keyword_rank
        if self.passage is not None:
            out["passage"] = self.passage
        if self.snippet is not None:
            out["snippet"] = self.snippet
            out["highlights"] = [list(h) for h in self.highlights]
        return out

    @classmethod
    def from_json(cls, r: dict[str, Any]) -> Hit:
        """A result as :meth:`as_dict` writes it (and the HTTP service sends it; a rank it
        leaves out is null)."""
        return cls(str(r["id"]), float(r["score"]), r["text"], r.get("metadata") or {}, None,
                   mode=str(r.get("mode", "dense")), dense_rank=r.get("dense_rank"),
                   keyword_rank=r.get("keyword_rank"), snippet=r.get("snippet"),
                   highlights=tuple((int(a), int(b)) for a, b in r.get("highlights") or ()),
                   passage=r.get("passage"))
