"""Where bulk embedding runs: in this process (``local``) or on a Ray cluster (``ray``).

An executor is an :class:`EmbedPool`: it takes batches of texts, tagged by the caller,
and gives back their vectors as they finish. The caller (:func:`retrieval.sync.vectors.
embed_stored`) reads the store, hands out batches and commits the vectors; a pool never
touches the store or the index. Ray is imported only when the ``ray`` executor is used.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

from retrieval.config import EXECUTORS
from retrieval.embed.base import Encoder
from retrieval.errors import ConfigError

T = TypeVar("T")


class EmbedPool(ABC):
    """Embeds tagged batches of texts; vectors come back unit-length, float32."""

    model_key: str
    dim: int
    workers: int = 1
    # What each worker built (EncoderSpec.describe), for reports.
    workers_info: list[dict[str, Any]]

    @abstractmethod
    def map(self, batches: Iterable[tuple[T, list[str]]]) -> Iterator[tuple[T, np.ndarray]]:
        """(tag, vectors) for every (tag, texts) batch, in the order they finish; batches
        are pulled from ``batches`` only as workers free up, so memory stays bounded."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the workers."""

    def __enter__(self) -> EmbedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalPool(EmbedPool):
    """This process's encoder, one batch after another."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.model_key = encoder.model_key
        self.dim = encoder.dim
        self.workers_info = [{"model_key": encoder.model_key, "backend": encoder.backend,
                              "precision": encoder.precision, "matches": True}]

    def map(self, batches: Iterable[tuple[T, list[str]]]) -> Iterator[tuple[T, np.ndarray]]:
        for tag, texts in batches:
            yield tag, self.encoder.encode(texts, progress=False)


def check_executor(name: str) -> str:
    """``name`` if it is an executor that can run here; a one-line error otherwise (Ray
    missing is found before anything is written, not after an ingest stored its rows)."""
    if name not in EXECUTORS:
        raise ConfigError(f"executor: must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if name == "ray" and importlib.util.find_spec("ray") is None:
        raise ConfigError("the ray executor needs Ray, which is not installed: pip install 'retrieval[ray]'")
    return name
