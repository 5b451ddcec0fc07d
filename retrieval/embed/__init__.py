"""Encoders: texts in, float32 L2-normalised matrix out."""

import logging
import threading
from typing import Any

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo, resolve_model

__all__ = ["Encoder", "ModelInfo", "resolve_model", "create_encoder", "encoder_for"]

log = logging.getLogger("retrieval")


_CACHE: dict[tuple[object, ...], Encoder] = {}
_CACHE_LOCK = threading.Lock()


def create_encoder(
    model: str,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    progress: bool = True,
    backend: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    prefer_key: str | None = None,
) -> Encoder:
    """The encoder for a configured model name or path (nothing heavy is loaded yet).

    Encoders are shared within a process: every Retriever of a long-running process (or
    every CLI invocation inside one test session) loads a model once.

    ``backend``/``precision`` ``auto`` pick the fastest setting on this machine that passed
    the quality gate (openvino bf16 on CPUs with AVX512-BF16 or AMX, else openvino fp32,
    onnx fp32, torch), preferring one whose vectors have ``prefer_key`` (the current
    index's key) so that an existing index stays usable; see
    :func:`retrieval.embed.onnx.plan`. onnx and openvino run the model exported to ONNX
    (exported on first use, which imports torch once; later processes never do). When a
    runtime is missing or the export fails, the torch encoder is used, with a warning; the
    encoder's ``fallback`` attribute says why, ``choice`` says how ``auto`` decided.
    """
    from retrieval.embed.onnx import plan

    info = resolve_model(model)
    chosen = plan(info, backend, precision, device=device, prefer_key=prefer_key)
    # Keyed by what runs and, for a fallback, by what was asked: the ``fallback`` note
    # belongs to the request that fell back, not to every user of that runtime.
    key = (info.key, device, batch_size, chosen["backend"], chosen["precision"], threads,
           tuple(chosen["passed_over"]) if (backend, precision) != ("auto", "auto") else ())
    with _CACHE_LOCK:
        encoder = _CACHE.get(key)
        if encoder is None:
            encoder = _build(info, chosen, device=device, batch_size=batch_size, progress=progress, threads=threads,
                             explicit=(backend, precision) != ("auto", "auto"))
            _CACHE[key] = encoder
    encoder.progress = progress  # type: ignore[attr-defined]
    return encoder


def _build(info: ModelInfo, chosen: dict[str, Any], *, device: str, batch_size: int, progress: bool,
           threads: int | None, explicit: bool) -> Encoder:
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    backend, precision = chosen["backend"], chosen["precision"]
    encoder: Encoder | None = None
    fallback = None
    if explicit and chosen["passed_over"]:
        # A setting the user asked for cannot run here. (With everything auto, passing
        # over openvino bf16 on a CPU without bf16 is expected: status says so, no warning.)
        fallback = "; ".join(chosen["passed_over"]) + f"; using {backend} {precision}"
        log.warning("%s", fallback)
    if backend != "torch":
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
    encoder.choice = chosen  # type: ignore[attr-defined]
    return encoder



def encoder_for(settings: Any, *, prefer_key: str | None = None, model: str | None = None) -> Encoder:
    """:func:`create_encoder` with a :class:`retrieval.config.Settings`' encoder settings
    (``model`` instead of the configured one, for `retrieve reindex --model`)."""
    return create_encoder(model or settings.model, device=settings.device, batch_size=settings.batch_size,
                          progress=settings.progress, backend=settings.backend, precision=settings.precision,
                          threads=settings.threads, prefer_key=prefer_key)
