"""``hash-N``: a deterministic test encoder, not a language model.

Tests of plumbing (kills, concurrency, the state machine, HTTP limits, CLI wiring) and
storage benchmarks need vectors, not meaning. Loading and running a real model there
costs most of their time, and on a slow CPU most of the suite's. This encoder is
instant and reproducible on every machine, in the way llm's ``embed-demo`` model is:

* each word (lower-cased ``\\w+`` run) maps to 8 distinct dimensions with signs, taken
  from its BLAKE2b digest; a text's vector is the sum over its words, L2-normalised;
* so identical texts get identical vectors, texts sharing words get a positive cosine
  (roughly the share of words they have in common), and unrelated texts score near 0;
* a text without any word (``?``) hashes as one word, so every vector has unit length;
* for splitting long texts into passages, a word is a token and the window is 256 words.

Select it like any model: ``model: hash-384`` (the number is the dimension, 8 to 4096).
Its model key, ``hash-384|384|...``, never equals a language model's, so its vectors
never mix with real ones; ``retrieve status`` says it is not a language model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo

WORD = re.compile(r"\w+")
PER_WORD = 8  # dimensions each word touches
# Function words would make every two English texts look alike.
STOPWORDS = frozenset(
    "a an and are as at be but by do for from has have how i in is it its me my no not of on or our so that the "
    "their them there these they this to was we were what when where which who why will with you your".split()
)

# Its window, in words: passages of long texts hold at most this many (no special tokens).
WINDOW = 256

NOT_A_LANGUAGE_MODEL = "a deterministic test encoder, not a language model: scores measure shared words, not meaning"


class HashEncoder(Encoder):
    """Bag-of-words feature hashing into ``dim`` dimensions (see the module docstring)."""

    backend = "hash"
    precision = "fp32"

    def __init__(self, info: ModelInfo, *, batch_size: int = 64, progress: bool = True) -> None:
        if info.dim is None:
            raise ValueError("a hash model has a dimension")
        self.info = info
        self.model_key = info.key
        self.dim = info.dim
        self.batch_size = batch_size
        self.progress = progress
        self._features = lru_cache(maxsize=1 << 16)(self._word_features)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_features"]  # a cache: rebuilt after unpickling
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._features = lru_cache(maxsize=1 << 16)(self._word_features)

    @property
    def window(self) -> int:
        """256 words: a word (``\\w+`` run) is a token, and none is special."""
        return WINDOW

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The character offsets of each text's words (``\\w+`` runs), its tokens."""
        return [np.array([m.span() for m in WORD.finditer(text)], dtype=np.int64).reshape(-1, 2) for text in texts]

    def _word_features(self, word: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The dimensions and signs of one word: distinct dimensions from its digest."""
        dims: list[int] = []
        signs: list[float] = []
        want = min(PER_WORD, self.dim)
        counter = 0
        while len(dims) < want:
            digest = hashlib.blake2b(f"{counter}:{word}".encode(), digest_size=32).digest()
            for i in range(0, len(digest), 4):
                value = int.from_bytes(digest[i : i + 4], "little")
                d = (value >> 1) % self.dim
                if d not in dims:
                    dims.append(d)
                    signs.append(1.0 if value & 1 else -1.0)
                    if len(dims) == want:
                        break
            counter += 1
        return tuple(dims), tuple(signs)

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for row, text in enumerate(items):
            words = WORD.findall(str(text).lower())
            words = [w for w in words if w not in STOPWORDS] or words or [str(text)]
            for word in words:
                dims, signs = self._features(word)
                rows.extend([row] * len(dims))
                cols.extend(dims)
                vals.extend(signs)
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        np.add.at(out, (np.asarray(rows, dtype=np.intp), np.asarray(cols, dtype=np.intp)), np.asarray(vals, np.float32))
        # Words whose signs cancel exactly (a text like "a b" whose words collide with
        # opposite signs everywhere) would leave a zero row: fall back to the whole text.
        for empty in np.flatnonzero(~out.any(axis=1)):
            dims, signs = self._features("\x00" + str(items[int(empty)]))
            out[int(empty), list(dims)] = signs
        return out

    def __repr__(self) -> str:
        return f"HashEncoder({self.model_key!r})"
