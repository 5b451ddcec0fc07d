"""Export a sentence-transformers model to ONNX once, checked against torch, into a cache.

sentence-transformers' own ONNX backend needs optimum, which cannot be installed next to
transformers 5, so the transformer is exported here with ``torch.onnx.export`` (the
TorchScript-based exporter: it handles BERT-style models with dynamic batch and sequence
axes and needs no extra packages). Pooling and normalisation stay in numpy
(:mod:`retrieval.embed.layout`), so one graph serves every pooling configuration.

Layout of the cache (``$XDG_CACHE_HOME/retrieval/onnx``, default ``~/.cache/...``)::

    <weights digest>/
        model.onnx        fp32 transformer: input_ids, attention_mask[, token_type_ids]
                          -> last_hidden_state, dynamic batch and sequence axes
        model.int8.onnx   dynamic int8 (onnxruntime.quantization), made on demand
        reference.npz     sample texts and their torch fp32 embeddings
        meta.json         model, versions, and the measured agreement with torch

The digest is the model directory's digest (weights and every configuration file), so a
changed model never reuses a stale export. A folder is written under a temporary name
and renamed into place, so readers never see half an export, and two processes that
export at once both end up with a complete one.

The export is refused unless the fp32 ONNX embeddings agree with torch (cosine at least
:data:`FP32_MIN_COSINE` on every sample text): only then may ONNX fp32 share torch's
model key, so vectors from both can sit in one index.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.layout import ModelLayout, model_filename
from retrieval.embed.model import ModelInfo
from retrieval.errors import BackendUnavailableError, ExportError

log = logging.getLogger("retrieval")

EXPORT_FORMAT = 1  # bump when the files of an export change meaning
OPSET = 17
FP32_MIN_COSINE = 0.9999

# Sample for the export check: short and long, punctuation, digits, non-ASCII, and one
# text longer than any model's limit (truncation must agree too).
SAMPLE_TEXTS: tuple[str, ...] = (
    "A comfortable and durable cotton t-shirt, perfect for everyday wear.",
    "High-performance running shoes with advanced cushioning for marathon runners.",
    "refund policy",
    "How do I reset my password?",
    "The boundary layer separates from the wing at high angles of attack.",
    "Serum cholesterol levels fell by 12% after 6 months of treatment (p < 0.01).",
    "Stainless steel water bottle, 750 ml, keeps drinks cold for 24 hours.",
    "Café crème brûlée — naïve façade, jalapeño, Zürich, 東京, Москва.",
    "?",
    "GPU",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Wireless noise-cancelling headphones with a 30-hour battery and a carrying case.",
    "Effects of dietary fat on blood pressure in hypertensive adults: a randomized trial.",
    "What is the heat transfer at the stagnation point of a blunt body in hypersonic flow?",
    "Kids' waterproof rain jacket with reflective strips and a detachable hood.",
    ("Aerodynamic heating of a flat plate in supersonic flow was measured for several "
     "Reynolds numbers and wall temperatures, and the results are compared with theory. ") * 30,
)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/retrieval/onnx`` (``~/.cache/retrieval/onnx`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "retrieval" / "onnx"


def export_dir(info: ModelInfo) -> Path:
    """The cache folder of a model's export (it may not exist yet)."""
    if info.digest is None or info.path is None:
        raise BackendUnavailableError(f"model {info.name!r} has no local files to export")
    return cache_root() / info.digest


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The export's meta.json, or None when the folder is not a complete current export."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != EXPORT_FORMAT or not (folder / "model.onnx").is_file():
        return None
    return dict(meta)


def is_exported(info: ModelInfo, precision: str = "fp32") -> bool:
    """Whether the cache holds this model in this precision (cheap: no runtime imported)."""
    try:
        folder = export_dir(info)
    except BackendUnavailableError:
        return False
    return read_meta(folder) is not None and (folder / model_filename(precision)).is_file()


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / f".meta.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, folder / "meta.json")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, d) matrices."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray((a * b).sum(axis=1), dtype=np.float64)


def reference(folder: Path) -> tuple[list[str], np.ndarray]:
    """The sample texts and their torch fp32 embeddings saved at export time."""
    with np.load(folder / "reference.npz") as data:
        return [str(t) for t in data["texts"]], np.asarray(data["embeddings"], dtype=np.float32)


def _export_fp32(info: ModelInfo, layout: ModelLayout, target: Path) -> dict[str, Any]:
    """Write model.onnx and reference.npz into ``target``; return the meta fields."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer

    transformers.utils.logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a command
    st = SentenceTransformer(str(info.path), device="cpu")
    st.eval()
    transformer = st[0].auto_model
    # Positional inputs in the order the tokenizer produces them; models without
    # token types (DistilBERT, RoBERTa) take two inputs.
    prepare = getattr(st, "preprocess", None) or st.tokenize  # tokenize is deprecated in 6.x
    sample = prepare(list(SAMPLE_TEXTS[:2]))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Wrapper(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: Any) -> Any:
            return self.model(**dict(zip(names, args)), return_dict=True).last_hidden_state

    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}
    dynamic["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # The tracer warns about Python-level branches in transformers' masking code; they
    # depend only on whether a mask is given (always), not on shapes, and the agreement
    # check below covers other lengths and batch sizes.
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper(transformer).eval(),
            tuple(sample[n] for n in names),
            str(target / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        ref = st.encode(list(SAMPLE_TEXTS), batch_size=8, normalize_embeddings=True, convert_to_numpy=True)
    np.savez(target / "reference.npz", texts=np.array(SAMPLE_TEXTS), embeddings=ref.astype(np.float32))
    import sentence_transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "inputs": names,
    }


def agreement(info: ModelInfo, folder: Path, precision: str, backend: str = "onnx") -> float:
    """Smallest cosine between this backend's embeddings of the sample and torch fp32's."""
    from retrieval.embed.runtimes import build_runtime_encoder

    texts, ref = reference(folder)
    enc = build_runtime_encoder(info, backend=backend, precision=precision, model_key="check", folder=folder,
                                threads=None, batch_size=8, progress=False)
    got = enc.encode(texts, progress=False)
    return float(cosines(got, ref).min())


def ensure_export(info: ModelInfo, precision: str = "fp32", *, force: bool = False) -> Path:
    """The export folder of ``info`` holding ``precision``; exports (and checks) if needed.

    Imports torch only when the fp32 export is missing. Raises :class:`ExportError` when
    the export fails or ONNX fp32 disagrees with torch.
    """
    if precision not in ("fp32", "int8"):
        raise BackendUnavailableError(f"ONNX exports exist in fp32 and int8, not {precision}")
    layout = ModelLayout.read(str(info.path)) if info.path else None
    folder = export_dir(info)
    if force and folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    if read_meta(folder) is None:
        assert layout is not None
        _export_fp32_folder(info, layout, folder)
    if precision == "int8" and not (folder / model_filename("int8")).is_file():
        quantize_int8(info, folder)
    return folder


def _export_fp32_folder(info: ModelInfo, layout: ModelLayout, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name[:16]}.", dir=folder.parent))
    try:
        log.warning("exporting %s to ONNX (once; takes a few seconds) into %s", info.name, folder)
        started = time.perf_counter()
        try:
            fields = _export_fp32(info, layout, tmp)
        except Exception as exc:
            raise ExportError(f"exporting {info.name} to ONNX failed: {exc}") from exc
        meta: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "model": info.name,
            "model_key": info.key,
            "source": str(info.path),
            "digest": info.digest,
            "dim": layout.dim,
            "max_seq_length": layout.max_seq_length,
            "pooling": list(layout.pooling),
            "opset": OPSET,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "export_seconds": 0.0,
            "agreement": {},
            **fields,
        }
        _write_meta(tmp, meta)
        worst = agreement(info, tmp, "fp32")
        if worst < FP32_MIN_COSINE:
            raise ExportError(
                f"ONNX fp32 embeddings of {info.name} differ from torch (smallest cosine {worst:.6f} < "
                f"{FP32_MIN_COSINE}); not using the export. Use backend torch for this model."
            )
        meta["agreement"] = {"onnx-fp32": round(worst, 7)}
        meta["export_seconds"] = round(time.perf_counter() - started, 2)
        _write_meta(tmp, meta)
        try:
            os.rename(tmp, folder)
        except OSError:
            # Another process finished first (the target exists): keep its export.
            if read_meta(folder) is None:
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def quantize_int8(info: ModelInfo, folder: Path) -> Path:
    """Write model.int8.onnx: dynamic int8 weights and activations (VNNI on AVX-512 CPUs)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise BackendUnavailableError(
            "int8 needs onnxruntime (with its quantization tools): pip install onnxruntime onnx"
        ) from exc
    target = folder / model_filename("int8")
    fd, tmp_name = tempfile.mkstemp(prefix=".int8.", suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        try:
            # Quantizing MatMul only: Gather (embeddings) in int8 costs accuracy for no speed.
            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # it logs advice to pre-process the model on the root logger
            try:
                quantize_dynamic(str(folder / "model.onnx"), tmp_name, weight_type=QuantType.QInt8,
                                 per_channel=True, op_types_to_quantize=["MatMul"])
            finally:
                root.setLevel(level)
        except Exception as exc:
            raise ExportError(f"int8 quantization of {info.name} failed: {exc}") from exc
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    record_agreement(info, folder, "onnx", "int8")
    return target


def record_agreement(info: ModelInfo, folder: Path, backend: str, precision: str) -> float:
    """Measure and store in meta.json how close a backend/precision comes to torch fp32."""
    worst = agreement(info, folder, precision, backend)
    meta = read_meta(folder) or {}
    meta.setdefault("agreement", {})[f"{backend}-{precision}"] = round(worst, 7)
    _write_meta(folder, meta)
    return worst


def list_exports() -> list[dict[str, Any]]:
    """Every export in the cache: folder, model, precisions, size, agreement with torch."""
    root = cache_root()
    rows: list[dict[str, Any]] = []
    if not root.is_dir():
        return rows
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        meta = read_meta(folder)
        if meta is None:
            continue
        precisions = [p for p in ("fp32", "int8") if (folder / model_filename(p)).is_file()]
        rows.append({
            "model": meta.get("model"),
            "model_key": meta.get("model_key"),
            "precisions": precisions,
            "dim": meta.get("dim"),
            "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
            "agreement": meta.get("agreement", {}),
            "exported_at": meta.get("exported_at"),
            "path": str(folder),
        })
    return rows

