"""What searches: the one interface the command line and the HTTP service search through,
implemented by :class:`~retrieval.retriever.Retriever` (this machine's store) and by
:class:`~retrieval.client.RemoteSearcher` (a running `retrieve serve`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from retrieval.search.hits import Hit


class Searcher(Protocol):
    """Searches one store, here or remote; results are :class:`Hit` either way."""

    def search(self, query: str | None = None, k: int | None = None, *, min_score: float | None = None,
               where: Any = None, mode: str = "dense", alpha: float | None = None, plus: Sequence[str] = (),
               minus: Sequence[str] = (), like: Sequence[str] = (), unlike: Sequence[str] = (),
               include_examples: bool = False) -> list[Hit]:
        """The top-``k`` documents for ``query`` (or the vector arithmetic of the examples)."""
        ...

    def search_many(self, queries: Sequence[str], k: int | None = None, *, min_score: float | None = None,
                    where: Any = None, mode: str = "dense", alpha: float | None = None) -> list[list[Hit]]:
        """:meth:`search` for several queries at once."""
        ...

    def similar(self, external_id: str, k: int | None = None, *, where: Any = None,
                min_score: float | None = None) -> list[Hit]:
        """The documents nearest to a stored one, itself left out."""
        ...

    def close(self) -> None:
        ...


__all__ = ["Hit", "Searcher"]
