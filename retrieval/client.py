"""The remote searcher behind `retrieve search --server`: a running `retrieve serve`
asked over HTTP, with the search interface of :class:`retrieval.Retriever`.

Only httpx is imported: `retrieve search --server URL` answers in milliseconds because it
loads neither torch, FAISS nor SQLAlchemy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.errors import ArgumentError, NotFoundError, RetrievalError, ServiceError
from retrieval.filters import FilterError

# The service's error codes whose error is the caller's, raised as the same class (and so
# with the same exit status) as a local search raises.
_ERRORS: dict[str, type[RetrievalError]] = {"invalid_request": ArgumentError, "invalid_filter": FilterError,
                                            "not_found": NotFoundError}


@dataclass(frozen=True)
class RemoteHit:
    """A search result from the service (the fields of :class:`retrieval.Hit` it sends)."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # mode, ranks, snippet, as sent

    @property
    def mode(self) -> str:
        return str(self.extra.get("mode", "dense"))

    @property
    def dense_rank(self) -> int | None:
        return self.extra.get("dense_rank")

    @property
    def keyword_rank(self) -> int | None:
        return self.extra.get("keyword_rank")

    @property
    def snippet(self) -> str | None:
        return self.extra.get("snippet")

    @property
    def highlights(self) -> list[Any]:
        return list(self.extra.get("highlights") or [])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "score": self.score, "text": self.text, "metadata": self.metadata, **self.extra}


def hit_from_json(r: dict[str, Any]) -> RemoteHit:
    """A result as the service sends it."""
    extra: dict[str, Any] = {key: r[key] for key in ("mode", "dense_rank", "keyword_rank", "snippet", "highlights")
                             if key in r}
    if extra.get("mode") == "hybrid":  # the service leaves out a rank that is null
        extra.setdefault("dense_rank", None)
        extra.setdefault("keyword_rank", None)
    return RemoteHit(r["id"], float(r["score"]), r["text"], r.get("metadata") or {}, extra)


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
            code = body.get("error") if isinstance(body, dict) else None
            error = _ERRORS.get(str(code), NotFoundError if response.status_code == 404 else ServiceError)
            raise error(f"the service answered {response.status_code}: {message or response.text[:200]}")
        if not isinstance(body, dict):
            raise ServiceError(f"the service at {self.url} did not answer JSON; is it a `retrieve serve` service?")
        return body

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               **options: Any) -> list[RemoteHit]:
        """The top-``k`` documents for ``query`` (the service's search_k when None);
        ``options`` are :meth:`retrieval.Retriever.search`'s (where, mode, alpha, plus, ...)."""
        payload: dict[str, Any] = {"query": query} if query is not None else {}
        if k is not None:
            payload["k"] = k
        if min_score is not None:
            payload["min_score"] = min_score
        for key, value in options.items():
            if value is not None and value != () and value != [] and not (key == "mode" and value == "dense"):
                payload[key] = list(value) if isinstance(value, tuple) else value
        body = self._post("/v1/search", payload)
        return [hit_from_json(r) for r in body["results"]]

    def similar(self, external_id: str, k: int | None = None, *, min_score: float | None = None,
                where: Any = None) -> list[RemoteHit]:
        return self.search(None, k, min_score=min_score, where=where, like=[external_id])

    def search_many(self, queries: Sequence[str], k: int | None = None, *,
                    min_score: float | None = None, **options: Any) -> list[list[RemoteHit]]:
        """One request per query over one kept-alive connection (the service batches them)."""
        return [self.search(q, k, min_score=min_score, **options) for q in queries]


__all__ = ["RemoteHit", "hit_from_json", "RemoteSearcher", "ServiceError"]
