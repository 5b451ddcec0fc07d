"""sentence-transformers backend. torch is imported only when the model is first used."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo
from retrieval.errors import RetrievalError


class SentenceTransformerEncoder(Encoder):
    """Encodes with ``SentenceTransformer``, batching texts of similar token counts.

    sentence-transformers sorts a batch by character length; on short catalog texts that
    pads batches to about twice their real token count. Sorting by token count first
    (the :class:`Encoder` loop does, with the lengths :meth:`prepare` gives) and handing
    the model one batch at a time avoids that padding, and gives the same vectors
    (padding is masked out).
    """

    backend = "torch"
    precision = "fp32"

    def __init__(self, info: ModelInfo, *, device: str = "cpu", batch_size: int = 64, progress: bool = True) -> None:
        self.info = info
        self.model_key = info.key
        self.dim = info.dim or 0
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._model: Any = None
        # A copy of the model's tokenizer for token_spans: a Hugging Face fast tokenizer
        # sets its truncation on the shared Rust tokenizer at each call, so untruncated
        # calls on the model's own instance could race with encode()'s truncated ones.
        self._full_tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            if self.info.path is not None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            try:
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()
                model = SentenceTransformer(
                    self.info.path or self.info.name, device=None if self.device == "auto" else self.device
                )
            except Exception as exc:
                raise RetrievalError(f"cannot load model {self.info.name!r}: {exc}") from exc
            model.eval()
            dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else None
            dim = dim or model.get_sentence_embedding_dimension()
            if dim is None:
                raise RetrievalError(f"model {self.info.name!r} does not say the size of its embeddings")
            if self.info.dim is not None and dim != self.info.dim:
                raise RetrievalError(
                    f"model {self.info.name!r} produces {dim}-dimensional vectors, but its configuration says {self.info.dim}"
                )
            self.dim = int(dim)
            if self.info.dim is None:
                self.model_key = ModelInfo(self.info.name, None, self.dim, self.info.digest).key
            self._model = model

    @property
    def max_seq_length(self) -> int:
        self.load()
        return int(self._model.max_seq_length or 512)

    def _untruncated(self) -> Any:
        self.load()
        with self._lock:
            if self._full_tokenizer is None:
                import copy

                self._full_tokenizer = copy.deepcopy(self._model.tokenizer)
            return self._full_tokenizer

    @property
    def window(self) -> int:
        """``max_seq_length`` less the special tokens the tokenizer adds ([CLS] and [SEP]: 254)."""
        return self.max_seq_length - int(self._untruncated().num_special_tokens_to_add(pair=False))

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Character offsets of each text's content tokens, untruncated (the fast
        tokenizer's ``offset_mapping``, which counts characters of the ``str``)."""
        if not texts:
            return []
        encoded = self._untruncated()(
            list(texts),
            add_special_tokens=False,
            truncation=False,
            padding=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no warning about texts longer than the model's maximum
        )
        return [np.asarray(offsets, dtype=np.int64).reshape(-1, 2) for offsets in encoded["offset_mapping"]]

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text as the model will see it (truncated, with specials)."""
        self.load()
        encoded = self._model.tokenizer(
            list(texts),
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))

    def prepare(self, texts: Sequence[str]) -> tuple[Sequence[Any], np.ndarray | None]:
        return texts, self.token_counts(texts) if len(texts) > 1 else None

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        return np.asarray(self._model.encode(list(items), batch_size=len(items), normalize_embeddings=True,
                                             convert_to_numpy=True, show_progress_bar=False))

    def __repr__(self) -> str:
        return f"SentenceTransformerEncoder({self.model_key!r}, device={self.device!r})"
