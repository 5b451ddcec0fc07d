"""The remote searcher behind `retrieve search --server`: a running `retrieve serve`
asked over HTTP, with the search interface of :class:`retrieval.Retriever`.

Only httpx is imported: `retrieve search --server URL` answers in milliseconds because it
loads neither torch, FAISS nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from retrieval.errors import NotFoundError, ServiceError


@dataclass(frozen=True)
class RemoteHit:
    """A search result from the service (the fields of :class:`retrieval.Hit` it sends)."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata}


class RemoteSearcher:
    """Searches a running `retrieve serve` with the interface of the Retriever's search.

    >>> RemoteSearcher("http://127.0.0.1:8000").search("refund policy", 3)  # doctest: +SKIP
    """

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        import httpx

        try:
            response = self._client.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise ServiceError(
                f"cannot reach the retrieval service at {self.url} ({exc}); start it with `retrieve serve`, "
                "or search locally without --server / RETRIEVE_SERVER"
            ) from exc
        if response.status_code == 401:
            raise ServiceError(f"the service at {self.url} refused the API key; set RETRIEVE_API_KEY to its key")
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            message = body.get("message") if isinstance(body, dict) else None
            if response.status_code == 404 and message is None:
                raise ServiceError(f"{self.url}{path} was not found: is {self.url} a `retrieve serve` service?")
            error = NotFoundError if response.status_code == 404 else ServiceError
            raise error(f"the service answered {response.status_code}: {message or response.text[:200]}")
        if not isinstance(body, dict):
            raise ServiceError(f"the service at {self.url} did not answer JSON; is it a `retrieve serve` service?")
        return body

    def search(self, query: str, k: int | None = None, *, min_score: float | None = None) -> list[RemoteHit]:
        """The top-``k`` documents for ``query`` (the service's search_k when None)."""
        payload: dict[str, Any] = {"query": query}
        if k is not None:
            payload["k"] = k
        if min_score is not None:
            payload["min_score"] = min_score
        body = self._post("/v1/search", payload)
        return [RemoteHit(r["id"], float(r["score"]), r["text"], r.get("metadata") or {}) for r in body["results"]]

    def search_many(self, queries: Sequence[str], k: int | None = None, *,
                    min_score: float | None = None) -> list[list[RemoteHit]]:
        """One request per query over one kept-alive connection (the service batches them)."""
        return [self.search(q, k, min_score=min_score) for q in queries]


__all__ = ["RemoteHit", "RemoteSearcher", "ServiceError"]
