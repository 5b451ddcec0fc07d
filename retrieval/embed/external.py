"""``external:NAME:DIM``: a store whose vectors come from the caller.

Some callers embed texts themselves (a LangChain ``Embeddings`` object, a hosted API, a
model this machine cannot run) and hand the store each document's vector. Such a store
never embeds anything: documents arrive with their vectors
(:meth:`retrieval.Retriever.ingest` with ``vector``), which are stored under this
model's key before the documents' commit, and searches take query vectors
(:meth:`retrieval.Retriever.search_vectors`) or stored documents' (``similar``).

The model key, ``external:NAME|DIM|caller``, never equals a language model's, so the
caller's vectors never mix with another model's in one index (nor with another
caller's model of the same dimension: NAME is part of it). The caller embedded each
whole text, so documents are never split into passages: one vector per document.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.errors import RetrievalError

PREFIX = "external:"
# external:NAME:DIM, NAME without ``|`` (the key's separator) or ``:`` (the name's).
EXTERNAL_MODEL = re.compile(r"^external:([^|:\s][^|:]*):(\d+)$")
DIMS = (1, 65536)
DIGEST = "caller"  # the key's third part: the caller, not files, says what the vectors mean


def is_external(model: str) -> bool:
    """Whether a configured model name is a caller's (``external:...``)."""
    return model.strip().startswith(PREFIX)


def external_model(name: str, dim: int) -> str:
    """The model setting of a store of ``name``'s vectors with ``dim`` dimensions."""
    clean = re.sub(r"[|:\s]+", "-", name.strip()).strip("-") or "vectors"
    return f"{PREFIX}{clean}:{int(dim)}"


def parse_external(model: str) -> tuple[str, int]:
    """(NAME, DIM) of ``external:NAME:DIM``; anything else is a one-line RetrievalError."""
    match = EXTERNAL_MODEL.match(model.strip())
    if not match:
        raise RetrievalError(f"model {model!r}: a caller's vectors are named external:NAME:DIM "
                             "(NAME without ':' or '|', DIM their dimension), e.g. external:my-embeddings:768")
    dim = int(match.group(2))
    if not DIMS[0] <= dim <= DIMS[1]:
        raise RetrievalError(f"model {model!r}: DIM must be between {DIMS[0]} and {DIMS[1]}")
    return match.group(1), dim


class ExternalEncoder(Encoder):
    """The encoder of a store whose vectors come from the caller: it knows its key and
    dimension, and refuses to embed (see the module docstring)."""

    backend = "external"
    precision = "fp32"
    splits_passages = False

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim
        self.model_key = f"{PREFIX}{name}|{dim}|{DIGEST}"

    @classmethod
    def of(cls, model: str) -> ExternalEncoder:
        name, dim = parse_external(model)
        return cls(name, dim)

    @property
    def model(self) -> str:
        """The model setting naming this store's vectors (``external:NAME:DIM``)."""
        return f"{PREFIX}{self.name}:{self.dim}"

    @property
    def window(self) -> int:
        raise RetrievalError(self.refusal())

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        raise RetrievalError(self.refusal())

    def refusal(self) -> str:
        return (f"this store's vectors come from the caller (model {self.name}, {self.dim} dimensions): "
                "pass vectors (a vector with each document, query vectors to search_vectors)")

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        raise RetrievalError(self.refusal())

    def encode(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        if not len(texts):
            return np.empty((0, self.dim), np.float32)
        raise RetrievalError(self.refusal())

    def __repr__(self) -> str:
        return f"ExternalEncoder({self.model_key!r})"
