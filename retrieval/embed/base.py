"""The encoder interface every backend implements, and the one loop they share.

A backend says how to prepare texts (tokenize them and measure their lengths) and how to
embed one batch; :meth:`Encoder.encode` does the rest, once for all of them: sort by
length so that a batch pads to about its own length, cut batches (at most ``batch_size``
texts and, when the lengths are known, at most ``max_batch_tokens`` padded tokens), show
progress, put every vector back in the caller's order and L2-normalise.

A backend also says how its model reads long texts, for splitting them into passages
(:mod:`retrieval.embed.passages`): :attr:`Encoder.window`, the most content tokens one
input may hold, and :meth:`Encoder.token_spans`, where each content token of a text lies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

# Inputs larger than this many batches show a progress bar (when progress is on).
PROGRESS_MIN_BATCHES = 4
# Padded tokens one batch may hold by default: 64 texts of 256 tokens. Attention costs
# grow with the padded length, so a batch of long passages gets fewer texts.
MAX_BATCH_TOKENS = 16384


class Encoder(ABC):
    """Turns texts into float32, L2-normalised row vectors.

    ``model_key`` identifies the model and everything that changes its outputs (name,
    dimension, digest of weights and configuration); vectors with different keys are
    never mixed in one index. It must be known without loading the model.
    """

    model_key: str
    dim: int
    backend: str = "?"
    precision: str = "fp32"
    batch_size: int = 64
    # The most padded tokens (texts x longest length) in one batch, when prepare() knows
    # the lengths; a single text longer than this still makes a batch of its own.
    max_batch_tokens: int = MAX_BATCH_TOKENS
    progress: bool = True
    # Whether documents longer than :attr:`window` are split into passages (False: the
    # caller embedded each whole text, one vector per document; see ``embed.external``).
    splits_passages: bool = True
    # Set by the factory: why a requested setting fell back (None when it did not), and
    # how ``auto`` chose (an EncoderPlan).
    fallback: str | None = None
    choice: Any = None
    # One-time preparation this encoder's construction cost (an ONNX export, say), and
    # when it was built (time.perf_counter()), so a caller can tell whether it paid for it.
    setup_seconds: float = 0.0
    built_at: float = 0.0

    def load(self) -> None:  # noqa: B027 - optional hook: backends without state need nothing
        """Load the model now instead of on first use (servers warm up with it)."""

    def prepare(self, texts: Sequence[str]) -> tuple[Sequence[Any], np.ndarray | None]:
        """What :meth:`embed_batch` takes for each text, and each text's length in tokens
        (None: no reordering). The default hands the texts over as they are."""
        return texts, None

    @property
    def window(self) -> int:
        """The most content tokens one input may hold: the model's maximum sequence length
        less the special tokens its tokenizer adds (254 for all-MiniLM-L6-v2). Text past
        it is truncated by :meth:`encode`; :func:`retrieval.embed.passages.split` cuts
        longer texts into passages of at most this many tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not say its window")

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        """For each text, an (n, 2) int64 array of the character ``[start, end)`` offsets
        (into the Python ``str``) of its content tokens, in order: no special tokens, and
        not truncated at :attr:`window`. It never changes what :meth:`encode` computes."""
        raise NotImplementedError(f"{type(self).__name__} does not give token offsets")

    @abstractmethod
    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Unnormalised vectors, (len(items), dim), for one batch of prepared items."""

    def encode(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        """Embed documents: a (len(texts), dim) float32 array with unit-length rows."""
        self.load()
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        items, lengths = self.prepare(texts)
        order = np.argsort(lengths, kind="stable") if lengths is not None and n > 1 else np.arange(n)
        show = self.progress if progress is None else progress
        bar = None
        if show and n > self.batch_size * PROGRESS_MIN_BATCHES:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="Embedding", unit="text", leave=False, dynamic_ncols=True)
        try:
            for idx in batches(order, None if lengths is None else np.asarray(lengths)[order],
                               self.batch_size, self.max_batch_tokens):
                out[idx] = self.embed_batch([items[i] for i in idx])
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return normalize(out)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        """Embed queries (symmetric models: the same as documents, without a progress bar)."""
        return self.encode(texts, progress=False)

    def setup_since(self, started: float) -> float:
        """The one-time preparation time of this encoder if it was built after ``started``
        (a ``time.perf_counter()`` reading), else 0: the caller paid for it."""
        return self.setup_seconds if self.built_at >= started else 0.0


def batches(order: np.ndarray, lengths: np.ndarray | None, batch_size: int,
            max_tokens: int) -> Iterator[np.ndarray]:
    """Cut ``order`` into consecutive batches of at most ``batch_size`` indices and, when
    ``lengths`` (each ordered text's token count, ascending) is given, of at most
    ``max_tokens`` padded tokens: a batch pads to its last, longest text. Every batch
    holds at least one index, however long its text."""
    if batch_size < 1 or max_tokens < 1:
        raise ValueError(f"batch_size and max_batch_tokens must be at least 1, not {batch_size} and {max_tokens}")
    n = len(order)
    start = 0
    while start < n:
        size = min(batch_size, n - start)
        if lengths is not None:
            # Ascending lengths: the padded size (k texts x the k-th length) only grows
            # with k, so the batch is the longest prefix within the budget.
            padded = np.arange(1, size + 1) * lengths[start : start + size]
            size = max(1, int(np.searchsorted(padded, max_tokens, side="right")))
        yield order[start : start + size]
        start += size


def normalize(vectors: np.ndarray) -> np.ndarray:
    """L2-normalise rows in float32; all-zero rows stay zero."""
    out = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
