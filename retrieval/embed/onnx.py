"""ONNX Runtime backend: the exported transformer, the model's own tokenizer, pooling in numpy.

Nothing here imports torch: a process that searches with ``backend: onnx`` loads
onnxruntime, tokenizers and numpy only (about a tenth of torch's start-up time). The
model is exported once by :mod:`retrieval.embed.export`; this module only reads the
export folder. Tokenizer and pooling are :mod:`retrieval.embed.layout`'s; batching by
token count and normalisation are the :class:`~retrieval.embed.base.Encoder` loop's.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder
from retrieval.embed.cpu import resolve_threads
from retrieval.embed.layout import ModelLayout, Tokenizer, model_filename, pool
from retrieval.embed.model import ModelInfo
from retrieval.errors import BackendUnavailableError


class OnnxEncoder(Encoder):
    """Encodes with an exported model in ONNX Runtime (fp32, or dynamic int8).

    ``export_dir`` is the folder :func:`retrieval.embed.export.ensure_export` made; the
    model key is decided by the caller (the torch key for fp32, whose outputs the export
    checked against torch; a suffixed key for int8).
    """

    backend = "onnx"
    precisions = ("fp32", "int8")

    def __init__(
        self,
        info: ModelInfo,
        export_dir: str | os.PathLike[str],
        *,
        model_key: str,
        precision: str = "fp32",
        threads: int | None = None,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        if precision not in self.precisions:
            raise BackendUnavailableError(
                f"the {self.backend} backend does not support precision {precision} "
                f"(supported: {', '.join(self.precisions)})"
            )
        if info.path is None:
            raise BackendUnavailableError(f"the {self.backend} backend needs a local model directory, not {info.name!r}")
        self.info = info
        self.export_dir = Path(export_dir)
        self.layout = ModelLayout.read(info.path)
        self.model_key = model_key
        self.dim = self.layout.dim
        self.precision = precision
        self.threads = resolve_threads(threads)
        self.batch_size = batch_size
        self.progress = progress
        self._runner: Any = None
        self._tokenizer: Tokenizer | None = None
        # The same tokenizer without truncation, for token_spans: a separate instance, so
        # that spans of long texts never change the truncation encode() relies on.
        self._full_tokenizer: Any = None
        self._lock = threading.Lock()

    @property
    def model_file(self) -> Path:
        """The ONNX file of this precision inside the export folder."""
        return self.export_dir / model_filename(self.precision)

    def _make_runner(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailableError("onnxruntime is not installed: pip install onnxruntime") from exc
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(self.model_file), sess_options=opts, providers=["CPUExecutionProvider"])
        self.session = session  # kept for inspection (threads, inputs)
        names = [i.name for i in session.get_inputs()]
        output = session.get_outputs()[0].name

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            return session.run([output], {k: feeds[k] for k in names})[0]

        return run

    def load(self) -> None:
        with self._lock:
            if self._runner is not None:
                return
            if not self.model_file.is_file():
                raise BackendUnavailableError(
                    f"{self.model_file} is missing; run `retrieve model export --precision {self.precision}`"
                )
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            self._tokenizer = Tokenizer(Path(self.info.path or ""), self.layout.max_seq_length)
            self._runner = self._make_runner()

    @property
    def max_seq_length(self) -> int:
        return self.layout.max_seq_length

    def _untruncated(self) -> Any:
        """The model's fast tokenizer (``tokenizers.Tokenizer``) without truncation or padding."""
        with self._lock:
            if self._full_tokenizer is None:
                from tokenizers import Tokenizer as HFTokenizer

                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                tokenizer = HFTokenizer.from_file(str(Path(self.info.path or "") / "tokenizer.json"))
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._full_tokenizer = tokenizer
            return self._full_tokenizer

    @property
    def window(self) -> int:
        """``max_seq_length`` less the special tokens the tokenizer adds ([CLS] and [SEP]: 254)."""
        return self.layout.max_seq_length - int(self._untruncated().num_special_tokens_to_add(False))

    def token_spans(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Character offsets of each text's content tokens, untruncated (the fast
        tokenizer's ``Encoding.offsets``, which count characters of the ``str``)."""
        encodings = self._untruncated().encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encodings]

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text as the model sees it (truncated, with special tokens)."""
        self.load()
        assert self._tokenizer is not None
        return np.fromiter((len(e.ids) for e in self._tokenizer.encode(texts)), dtype=np.int64, count=len(texts))

    def prepare(self, texts: Sequence[str]) -> tuple[Sequence[Any], np.ndarray]:
        """Tokenize once; the lengths give the batching order (short batches pad little)."""
        assert self._tokenizer is not None
        encodings = self._tokenizer.encode(texts)
        return encodings, np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))

    def embed_batch(self, items: Sequence[Any]) -> np.ndarray:
        """Pooled, unnormalised vectors of one batch of encodings."""
        assert self._tokenizer is not None
        feeds = self._tokenizer.pad(items)
        hidden = self._runner(feeds)
        return pool(hidden, feeds["attention_mask"], self.layout.pooling)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_key!r}, precision={self.precision!r}, threads={self.threads})"
