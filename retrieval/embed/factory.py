"""Build the encoder the settings ask for: the plan of :mod:`retrieval.embed.choice`, the
export it needs, and a fallback to torch when a runtime cannot be built.

Encoders are shared within a process: every Retriever of a long-running process (or
every CLI invocation inside one test session) loads a model once.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from retrieval.embed.base import Encoder
from retrieval.embed.choice import GATE_FAILED, EncoderPlan, check_backend, plan, runtime_key
from retrieval.embed.model import ModelInfo, resolve_model
from retrieval.errors import BackendUnavailableError, ExportError

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

    ``backend``/``precision`` ``auto`` pick the fastest setting on this machine that passed
    the quality gate (openvino bf16 on CPUs with AVX512-BF16 or AMX, else openvino fp32,
    onnx fp32, torch), preferring one whose vectors have ``prefer_key`` (the current
    index's key) so that an existing index stays usable; see
    :func:`retrieval.embed.choice.plan`. onnx and openvino run the model exported to ONNX
    (exported on first use, which imports torch once; later processes never do). When a
    runtime is missing or the export fails, the torch encoder is used, with a warning; the
    encoder's ``fallback`` attribute says why, ``choice`` says how ``auto`` decided.
    ``hash-N`` models build the test encoder of :mod:`retrieval.embed.hashing`.
    """
    info = resolve_model(model)
    chosen = plan(info, backend, precision, device=device, prefer_key=prefer_key)
    explicit = (backend, precision) != ("auto", "auto")
    # Keyed by what runs and, for a fallback, by what was asked: the ``fallback`` note
    # belongs to the request that fell back, not to every user of that runtime.
    key = (info.key, device, batch_size, chosen.backend, chosen.precision, threads,
           chosen.passed_over if explicit else ())
    with _CACHE_LOCK:
        encoder = _CACHE.get(key)
        if encoder is None:
            encoder = _build(info, chosen, device=device, batch_size=batch_size, progress=progress, threads=threads,
                             explicit=explicit)
            encoder.built_at = time.perf_counter()
            _CACHE[key] = encoder
    encoder.progress = progress
    return encoder


def _build(info: ModelInfo, chosen: EncoderPlan, *, device: str, batch_size: int, progress: bool,
           threads: int | None, explicit: bool) -> Encoder:
    if chosen.backend == "external":
        from retrieval.embed.external import ExternalEncoder

        external = ExternalEncoder(info.name.removeprefix("external:"), info.dim or 0)
        external.choice = chosen
        return external
    if chosen.backend == "hash":
        from retrieval.embed.hashing import HashEncoder

        hashed = HashEncoder(info, batch_size=batch_size, progress=progress)
        hashed.choice = chosen
        return hashed
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    encoder: Encoder | None = None
    fallback = None
    if explicit and chosen.passed_over:
        # A setting the user asked for cannot run here. (With everything auto, passing
        # over openvino bf16 on a CPU without bf16 is expected: status says so, no warning.)
        fallback = "; ".join(chosen.passed_over) + f"; using {chosen.backend} {chosen.precision}"
        log.warning("%s", fallback)
    if chosen.backend != "torch":
        try:
            encoder = runtime_encoder(info, backend=chosen.backend, precision=chosen.precision, threads=threads,
                                      batch_size=batch_size, progress=progress)
        except (BackendUnavailableError, ExportError) as exc:
            fallback = f"backend {chosen.backend} {chosen.precision} is unavailable ({exc}); using torch fp32"
            log.warning("%s", fallback)
    if encoder is None:
        encoder = SentenceTransformerEncoder(info, device=device, batch_size=batch_size, progress=progress)
    encoder.fallback = fallback
    encoder.choice = chosen
    return encoder


def runtime_encoder(
    info: ModelInfo, *, backend: str, precision: str, threads: int | None, batch_size: int, progress: bool
) -> Encoder:
    """A ready-to-load encoder for ``backend``/``precision``, exporting the model first if needed.

    The first call for a model exports it (importing torch, a few seconds); later calls and
    processes read the cache. The time that took (the export, and the one-time check of a
    runtime's agreement with torch) is the encoder's ``setup_seconds``.
    Raises BackendUnavailableError or ExportError.
    """
    from retrieval.embed.export import ensure_export, is_exported, read_meta, record_agreement
    from retrieval.embed.runtimes import build_runtime_encoder

    check_backend(info, backend, precision)
    started = time.perf_counter()
    file_precision = "int8" if precision == "int8" else "fp32"
    prepared = not is_exported(info, file_precision)
    folder = ensure_export(info, file_precision)
    meta = read_meta(folder) or {}
    agreement = dict(meta.get("agreement", {}))
    if backend != "onnx" and f"{backend}-{precision}" not in agreement:
        # Measured once per export, then read from meta.json (no torch needed: the
        # reference embeddings were saved at export time).
        agreement[f"{backend}-{precision}"] = record_agreement(info, folder, backend, precision)
        prepared = True
    setup = time.perf_counter() - started if prepared else 0.0
    verdict = GATE_FAILED.get((backend, precision))
    if verdict:
        log.warning("backend %s with precision %s failed the quality gate (%s); expect worse results than fp32",
                    backend, precision, verdict)
    encoder = build_runtime_encoder(info, backend=backend, precision=precision,
                                    model_key=runtime_key(info, backend, precision, agreement),
                                    folder=folder, threads=threads, batch_size=batch_size, progress=progress)
    encoder.setup_seconds = setup
    return encoder


def encoder_for(settings: Any, *, prefer_key: str | None = None, model: str | None = None) -> Encoder:
    """:func:`create_encoder` with a :class:`retrieval.config.Settings`' encoder settings
    (``model`` instead of the configured one, for `retrieve reindex --model`)."""
    e = settings.encoder
    return create_encoder(model or e.model, device=e.device, batch_size=e.batch_size, progress=settings.ingest.progress,
                          backend=e.backend, precision=e.precision, threads=e.threads, prefer_key=prefer_key)


def plan_for(settings: Any, *, prefer_key: str | None = None) -> EncoderPlan:
    """What :func:`encoder_for` would build for ``settings``, without loading anything."""
    e = settings.encoder
    return plan(resolve_model(e.model), e.backend, e.precision, device=e.device, prefer_key=prefer_key)
