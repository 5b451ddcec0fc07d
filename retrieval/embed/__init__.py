"""Encoders: texts in, float32 L2-normalised matrix out."""

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo, resolve_model

__all__ = ["Encoder", "ModelInfo", "resolve_model", "create_encoder"]


_CACHE: dict[tuple[str, str, int], Encoder] = {}


def create_encoder(model: str, *, device: str = "cpu", batch_size: int = 64, progress: bool = True) -> Encoder:
    """The encoder for a configured model name or path (nothing heavy is loaded yet).

    Encoders are shared within a process: every Retriever of a long-running process (or
    every CLI invocation inside one test session) loads a model once.
    """
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    info = resolve_model(model)
    key = (info.key, device, batch_size)
    encoder = _CACHE.get(key)
    if encoder is None:
        encoder = _CACHE[key] = SentenceTransformerEncoder(info, device=device, batch_size=batch_size, progress=progress)
    encoder.progress = progress  # type: ignore[attr-defined]
    return encoder
