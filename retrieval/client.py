"""The remote searcher behind `retrieve search --server`: a running `retrieve serve`
asked over HTTP, with the search interface of :class:`retrieval.Retriever`.

Only httpx is imported: `retrieve search --server URL` answers in milliseconds because it
loads neither torch, FAISS nor SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from retrieval.errors import ArgumentError, NotFoundError, RetrievalError, ServiceError
from retrieval.filters import Filter, FilterError
from retrieval.search.hits import Hit

# The service's error codes whose error is the caller's, raised as the same class (and so
# with the same exit status) as a local search raises.
_ERRORS: dict[str, type[RetrievalError]] = {"invalid_request": ArgumentError, "invalid_filter": FilterError,
                                            "not_found": NotFoundError}


_START_HINT = "start it with `retrieve serve`, or search locally without --server / RETRIEVE_SERVER"
_KEY_HINT = "set RETRIEVE_API_KEY to its key"


def unreachable(url: str, exc: Exception, hint: str = _START_HINT) -> ServiceError:
    """The one-line error for a service that cannot be reached (``exc``: httpx's)."""
    return ServiceError(f"cannot reach the retrieval service at {url} ({exc or type(exc).__name__}); {hint}")


def read_answer(url: str, path: str, response: Any, *, key_hint: str = _KEY_HINT) -> dict[str, Any]:
    """The JSON body of the service's answer to ``path`` (an ``httpx.Response``), or its
    error as the :class:`~retrieval.errors.RetrievalError` a local call raises, in one
    line: the service's message, or what the answer says about the URL or the key."""
    if response.status_code == 401:
        raise ServiceError(f"the service at {url} refused the API key; {key_hint}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("message") if isinstance(body, dict) else None
        if response.status_code == 404 and message is None:
            raise ServiceError(f"{url}{path} was not found: is {url} a `retrieve serve` service?")
        code = body.get("error") if isinstance(body, dict) else None
        error = _ERRORS.get(str(code), NotFoundError if response.status_code == 404 else ServiceError)
        raise error(f"the service answered {response.status_code}: {message or response.text[:200]}")
    if not isinstance(body, dict):
        raise ServiceError(f"the service at {url} did not answer JSON; is it a `retrieve serve` service?")
    return body


def search_payload(query: str | None = None, k: int | None = None, *, min_score: float | None = None,
                   where: Any = None, mode: str = "dense", alpha: float | None = None, plus: Sequence[str] = (),
                   minus: Sequence[str] = (), like: Sequence[str] = (), unlike: Sequence[str] = (),
                   include_examples: bool = False) -> dict[str, Any]:
    """The body of ``POST /v1/search`` for these arguments of
    :meth:`retrieval.Retriever.search` (those left at their default are left out)."""
    if isinstance(where, Filter):
        where = json.loads(where.canonical)
    payload: dict[str, Any] = {"query": query} if query is not None else {}
    options: dict[str, Any] = {"k": k, "min_score": min_score, "where": where, "alpha": alpha,
                               "mode": None if mode == "dense" else mode, "plus": list(plus),
                               "minus": list(minus), "like": list(like), "unlike": list(unlike),
                               "include_examples": include_examples or None}
    payload.update((key, value) for key, value in options.items() if value not in (None, []))
    return payload


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
            raise unreachable(self.url, exc) from exc
        return read_answer(self.url, path, response)

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               where: Any = None, mode: str = "dense", alpha: float | None = None, plus: Sequence[str] = (),
               minus: Sequence[str] = (), like: Sequence[str] = (), unlike: Sequence[str] = (),
               include_examples: bool = False) -> list[Hit]:
        """:meth:`retrieval.Retriever.search`, answered by the service (its search_k when
        ``k`` is None)."""
        payload = search_payload(query, k, min_score=min_score, where=where, mode=mode, alpha=alpha, plus=plus,
                                 minus=minus, like=like, unlike=unlike, include_examples=include_examples)
        body = self._post("/v1/search", payload)
        return [Hit.from_json(r) for r in body["results"]]

    def similar(self, external_id: str, k: int | None = None, *, where: Any = None,
                min_score: float | None = None) -> list[Hit]:
        return self.search(None, k, min_score=min_score, where=where, like=[external_id])

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None,
                    where: Any = None, mode: str = "dense", alpha: float | None = None) -> list[list[Hit]]:
        """One request per query over one kept-alive connection (the service batches them)."""
        return [self.search(q, k, min_score=min_score, where=where, mode=mode, alpha=alpha) for q in queries]


__all__ = ["RemoteSearcher", "ServiceError"]
