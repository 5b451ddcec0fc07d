"""Build an exported-graph encoder (ONNX Runtime or OpenVINO) over an export folder.

Kept apart from both encoders and from the export, which all need it or are needed by
it: the export checks its output with these encoders, and the factory builds them.
"""

from __future__ import annotations

from pathlib import Path

from retrieval.embed.model import ModelInfo
from retrieval.embed.onnx import OnnxEncoder
from retrieval.errors import BackendUnavailableError


def build_runtime_encoder(
    info: ModelInfo,
    *,
    backend: str,
    precision: str,
    model_key: str,
    folder: Path,
    threads: int | None,
    batch_size: int,
    progress: bool,
) -> OnnxEncoder:
    """The ONNX Runtime or OpenVINO encoder over an existing export folder (nothing loaded yet)."""
    cls: type[OnnxEncoder]
    if backend == "onnx":
        cls = OnnxEncoder
    elif backend == "openvino":
        from retrieval.embed.openvino import OpenVINOEncoder

        cls = OpenVINOEncoder
    else:
        raise BackendUnavailableError(f"unknown backend {backend!r}")
    return cls(info, folder, model_key=model_key, precision=precision, threads=threads,
               batch_size=batch_size, progress=progress)
