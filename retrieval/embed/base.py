"""The encoder interface every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Encoder(ABC):
    """Turns texts into float32, L2-normalised row vectors.

    ``model_key`` identifies the model and everything that changes its outputs (name,
    dimension, digest of weights and configuration); vectors with different keys are
    never mixed in one index. It must be known without loading the model.
    """

    model_key: str
    dim: int

    @abstractmethod
    def encode(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """Embed documents: a (len(texts), dim) float32 array with unit-length rows."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (symmetric models: the same as documents, without a progress bar)."""
        return self.encode(texts, progress=False)

    def load(self) -> None:
        """Load the model now instead of on first use (servers warm up with it)."""


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float32; all-zero rows stay zero."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
