"""Encoders: texts in, float32 L2-normalised matrix out."""

from retrieval.embed.base import Encoder
from retrieval.embed.model import ModelInfo, resolve_model

__all__ = ["Encoder", "ModelInfo", "resolve_model", "create_encoder"]


def create_encoder(model: str, *, device: str = "cpu", batch_size: int = 64, progress: bool = True) -> Encoder:
    """The encoder for a configured model name or path (nothing heavy is loaded yet)."""
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    return SentenceTransformerEncoder(resolve_model(model), device=device, batch_size=batch_size, progress=progress)
