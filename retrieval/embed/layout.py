"""What the exported-graph encoders need from a sentence-transformers directory: its
layout (modules, pooling, sequence length), its fast tokenizer, and pooling in numpy.

What they reproduce from the sentence-transformers pipeline, and how:

* tokenization: ``tokenizer.json`` of the model directory (the same fast tokenizer
  sentence-transformers uses), truncated at ``max_seq_length`` from
  ``sentence_bert_config.json``, padded to the longest text of each batch;
* pooling: ``1_Pooling/config.json`` (mean, cls, max, mean-sqrt-len; several modes are
  concatenated in that order, as sentence-transformers does);
* normalisation: always, in :class:`retrieval.embed.base.Encoder` (the interface
  promises unit rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.errors import BackendUnavailableError

# The module types the exported graph plus numpy pooling can reproduce exactly.
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


def model_filename(precision: str) -> str:
    """The ONNX file of a precision inside an export folder (bf16 is a compile option of
    OpenVINO over the fp32 file, not a file of its own)."""
    return "model.int8.onnx" if precision == "int8" else "model.onnx"


@dataclass(frozen=True)
class ModelLayout:
    """What the ONNX path needs from a sentence-transformers directory."""

    root: Path
    max_seq_length: int
    pooling: tuple[str, ...]  # subset of POOLING_MODES, in sentence-transformers' order
    hidden_size: int

    @property
    def dim(self) -> int:
        return self.hidden_size * len(self.pooling)

    @classmethod
    def read(cls, root: str | os.PathLike[str]) -> ModelLayout:
        """Read and check the model's configuration files; raises BackendUnavailableError."""
        path = Path(root)
        if not (path / "tokenizer.json").is_file():
            raise BackendUnavailableError(f"model directory {path} has no tokenizer.json (a fast tokenizer is required)")
        try:
            modules = json.loads((path / "modules.json").read_text())
        except (OSError, ValueError) as exc:
            raise BackendUnavailableError(f"model directory {path} has no readable modules.json") from exc
        pooling_cfg: dict[str, Any] | None = None
        for i, module in enumerate(modules):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind not in SUPPORTED_MODULES:
                raise BackendUnavailableError(
                    f"model module {kind!r} is not supported by the ONNX backend (only Transformer, Pooling, Normalize)"
                )
            if kind == "Transformer" and i != 0:
                raise BackendUnavailableError("the ONNX backend needs the Transformer as the first module")
            if kind == "Pooling":
                pooling_cfg = json.loads((path / module.get("path", "") / "config.json").read_text())
        if pooling_cfg is None:
            raise BackendUnavailableError(f"model directory {path} has no Pooling module")
        modes = tuple(m for m in POOLING_MODES if pooling_cfg.get(f"pooling_mode_{m}") is True)
        unknown = [k for k, v in pooling_cfg.items() if k.startswith("pooling_mode_") and v is True
                   and k[len("pooling_mode_"):] not in POOLING_MODES]
        if unknown or not modes:
            raise BackendUnavailableError(f"pooling {unknown or 'none'} is not supported by the ONNX backend")
        try:
            st_cfg = json.loads((path / "sentence_bert_config.json").read_text())
        except (OSError, ValueError):
            st_cfg = {}
        config = json.loads((path / "config.json").read_text())
        max_len = int(st_cfg.get("max_seq_length") or config.get("max_position_embeddings") or 512)
        hidden = int(pooling_cfg.get("word_embedding_dimension") or config["hidden_size"])
        return cls(path, max_len, modes, hidden)


def pool(hidden: np.ndarray, mask: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Pool token vectors (batch, seq, hidden) into sentence vectors as sentence-transformers does."""
    hidden = hidden.astype(np.float32, copy=False)
    m = mask.astype(np.float32)[:, :, None]
    counts = np.maximum(m.sum(axis=1), 1e-9)
    parts = []
    for mode in modes:
        if mode == "cls_token":
            parts.append(hidden[:, 0])
        elif mode == "mean_tokens":
            parts.append((hidden * m).sum(axis=1) / counts)
        elif mode == "max_tokens":
            # sentence-transformers sets padded positions to -1e9 before the max.
            parts.append(np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1))
        elif mode == "mean_sqrt_len_tokens":
            parts.append((hidden * m).sum(axis=1) / np.sqrt(counts))
        else:  # pragma: no cover - ModelLayout.read rejects other modes
            raise ValueError(mode)
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


class Tokenizer:
    """The model's fast tokenizer: truncates at ``max_length``; pads per batch in numpy."""

    def __init__(self, root: Path, max_length: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(root / "tokenizer.json"))
        # tokenizer.json may carry a fixed padding (some exports pad to 128): never pad here,
        # batches are padded to their longest text below.
        self._tok.no_padding()
        self._tok.enable_truncation(max_length=max_length)
        self.max_length = max_length
        pad_id = 0
        try:
            cfg = json.loads((root / "tokenizer_config.json").read_text())
            pad_token = cfg.get("pad_token")
            if isinstance(pad_token, dict):
                pad_token = pad_token.get("content")
            token_id = self._tok.token_to_id(pad_token) if pad_token is not None else None
            if token_id is not None:
                pad_id = int(token_id)
        except (OSError, ValueError):
            pass
        self.pad_id = pad_id

    def encode(self, texts: Sequence[str]) -> list[Any]:
        """One ``tokenizers.Encoding`` per text (truncated, special tokens added, unpadded)."""
        return list(self._tok.encode_batch(list(texts), add_special_tokens=True))

    def pad(self, encodings: Sequence[Any]) -> dict[str, np.ndarray]:
        """int64 input_ids, attention_mask, token_type_ids padded to the longest encoding."""
        n = len(encodings)
        length = max(len(e.ids) for e in encodings)
        ids = np.full((n, length), self.pad_id, dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.int64)
        types = np.zeros((n, length), dtype=np.int64)
        for row, e in enumerate(encodings):
            k = len(e.ids)
            ids[row, :k] = e.ids
            mask[row, :k] = 1
            types[row, :k] = e.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
