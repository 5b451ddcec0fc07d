"""Encoders: texts in, float32 L2-normalised matrix out."""

import logging

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo, resolve_model

__all__ = ["Encoder", "ModelInfo", "resolve_model", "create_encoder"]

log = logging.getLogger("retrieval")


_CACHE: dict[tuple[object, ...], Encoder] = {}


def create_encoder(
    model: str,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    backend: str = "torch",
    precision: str = "fp32",
    threads: int | None = None,
) -> Encoder:
    """The encoder for a configured model name or path (nothing heavy is loaded yet).

    Encoders are shared within a process: every Retriever of a long-running process (or
    every CLI invocation inside one test session) loads a model once.

    ``backend`` onnx or openvino runs the model exported to ONNX (exported on the first
    use, which imports torch once; later processes never do). When the runtime is not
    installed, the model or precision is not supported, or the export fails, the torch
    encoder is used instead, with a warning; its ``fallback`` attribute says why.
    """
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    info = resolve_model(model)
    key = (info.key, device, batch_size, backend, precision, threads)
    encoder = _CACHE.get(key)
    if encoder is None:
        fallback = None
        if backend == "torch" and precision != "fp32":
            fallback = f"backend torch runs fp32 only, not {precision}; use backend onnx (int8) or openvino (bf16)"
            log.warning("%s", fallback)
        elif backend != "torch":
            from retrieval.embed.export import ExportError
            from retrieval.embed.onnx import BackendUnavailableError, runtime_encoder

            try:
                encoder = runtime_encoder(info, backend=backend, precision=precision, threads=threads,
                                          batch_size=batch_size, progress=progress)
            except (BackendUnavailableError, ExportError) as exc:
                fallback = f"backend {backend} {precision} is unavailable ({exc}); using torch fp32"
                log.warning("%s", fallback)
        if encoder is None:
            encoder = SentenceTransformerEncoder(info, device=device, batch_size=batch_size, progress=progress)
        encoder.fallback = fallback  # type: ignore[attr-defined]
        _CACHE[key] = encoder
    encoder.progress = progress  # type: ignore[attr-defined]
    return encoder
