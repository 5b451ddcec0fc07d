"""ONNX Runtime backend: the exported transformer, the model's own tokenizer, pooling in numpy.

Nothing here imports torch: a process that searches with ``backend: onnx`` loads
onnxruntime, tokenizers and numpy only (about a tenth of torch's start-up time). The
model is exported once by :mod:`retrieval.embed.export`; this module only reads the
export folder.

What the encoder reproduces from the sentence-transformers pipeline, and how:

* tokenization: ``tokenizer.json`` of the model directory (the same fast tokenizer
  sentence-transformers uses), truncated at ``max_seq_length`` from
  ``sentence_bert_config.json``, padded to the longest text of each batch;
* batching: texts sorted by token count, so a batch pads to about its own length;
* pooling: ``1_Pooling/config.json`` (mean, cls, max, mean-sqrt-len; several modes are
  concatenated in that order, as sentence-transformers does);
* normalisation: always (the interface promises unit rows).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.base import Encoder, normalize
from retrieval.embed.model import ModelInfo
from retrieval.errors import RetrievalError

log = logging.getLogger("retrieval")

# The module types the exported graph plus numpy pooling can reproduce exactly.
SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens")


class BackendUnavailableError(RetrievalError):
    """A backend or precision cannot run here (runtime missing, unsupported model or CPU)."""


# -- model configuration -----------------------------------------------------------------


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


# -- threads ------------------------------------------------------------------------------


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-restricted, not the host's count)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    return max(n, 1)


def physical_cores() -> int:
    """Physical cores among the usable CPUs: hyper-threads share one core's FMA units, so
    an intra-op thread per hyper-thread only adds contention."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return usable_cpus()
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            return len(cpus)
    return max(len(cores), 1)


def resolve_threads(threads: int | None) -> int:
    """Intra-op threads: the setting (capped at the usable CPUs), else the physical cores."""
    if threads is None:
        return physical_cores()
    cap = usable_cpus()
    if threads > cap:
        log.warning("threads=%d is more than the %d CPUs this process may use; using %d", threads, cap, cap)
        return cap
    return threads


# -- tokenizer ----------------------------------------------------------------------------


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
            if pad_token is not None and self._tok.token_to_id(pad_token) is not None:
                pad_id = int(self._tok.token_to_id(pad_token))
        except (OSError, ValueError):
            pass
        self.pad_id = pad_id

    def encode(self, texts: Sequence[str]) -> list[Any]:
        """One ``tokenizers.Encoding`` per text (truncated, special tokens added, unpadded)."""
        return self._tok.encode_batch(list(texts), add_special_tokens=True)

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


# -- encoder ------------------------------------------------------------------------------


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
        self._lock = threading.Lock()

    # The ONNX file of this precision inside the export folder.
    @property
    def model_file(self) -> Path:
        from retrieval.embed.export import model_filename

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

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Token count of each text as the model sees it (truncated, with special tokens)."""
        self.load()
        assert self._tokenizer is not None
        return np.fromiter((len(e.ids) for e in self._tokenizer.encode(texts)), dtype=np.int64, count=len(texts))

    def embed_batch(self, encodings: Sequence[Any]) -> np.ndarray:
        """Pooled, unnormalised vectors of one batch of encodings."""
        assert self._tokenizer is not None
        feeds = self._tokenizer.pad(encodings)
        hidden = self._runner(feeds)
        return pool(hidden, feeds["attention_mask"], self.layout.pooling)

    def encode(self, texts: Sequence[str], *, progress: bool | None = None) -> np.ndarray:
        self.load()
        assert self._tokenizer is not None
        n = len(texts)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        # Tokenize once; the lengths give the batching order (short batches pad little).
        encodings = self._tokenizer.encode(texts)
        order = np.argsort(np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=n), kind="stable")
        show = self.progress if progress is None else progress
        bar = None
        if show and n > self.batch_size * 4:
            from tqdm import tqdm

            bar = tqdm(total=n, desc="Embedding", unit="text", leave=False, dynamic_ncols=True)
        try:
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self.embed_batch([encodings[i] for i in idx])
                if bar is not None:
                    bar.update(len(idx))
        finally:
            if bar is not None:
                bar.close()
        return normalize(out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_key!r}, precision={self.precision!r}, threads={self.threads})"


# -- choosing a backend -------------------------------------------------------------------

# Key suffixes: vectors that measurably differ from torch fp32 never share its key.
KEY_SUFFIX = {"fp32": "", "bf16": "|bf16", "int8": "|int8"}
RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}

# Quality gate (scripts/quality_gate.py, all-MiniLM-L6-v2): settings that lost more than
# 0.002 nDCG@10 (cranfield, medline) or Spearman (stsb) against torch fp32. They are
# never the default and warn when chosen.
GATE_FAILED: dict[tuple[str, str], str] = {
    # bench/quality_gate.md, 2026-11-27: cranfield -0.0035, stsb -0.0023 (medline +0.0112)
    ("onnx", "int8"): "cranfield nDCG@10 -0.0035 and STS-B Spearman -0.0023 against torch fp32",
}


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
    """The ONNX Runtime or OpenVINO encoder over an existing export folder."""
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


def check_backend(info: ModelInfo, backend: str, precision: str) -> None:
    """Cheap checks (no runtime imported) that ``backend`` can run ``precision`` for this model."""
    import importlib.util

    if precision not in PRECISIONS[backend]:
        other = [b for b, ps in PRECISIONS.items() if precision in ps]
        hint = f"; use backend {other[0]}" if other else ""
        raise BackendUnavailableError(f"backend {backend} does not run {precision} on this CPU{hint}")
    module = RUNTIME_MODULE[backend]
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailableError(f"{module} is not installed (pip install {module})")
    if info.path is None:
        raise BackendUnavailableError(f"model {info.name!r} is not a local directory")
    ModelLayout.read(info.path)
    if backend == "openvino" and precision == "bf16":
        from retrieval.embed.openvino import cpu_has_bf16

        if not cpu_has_bf16():
            raise BackendUnavailableError("this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def runtime_key(info: ModelInfo, backend: str, precision: str, agreement: dict[str, float] | None = None) -> str:
    """The model key of a backend's vectors.

    fp32 shares torch's key: ONNX fp32 was checked against torch at export, OpenVINO fp32
    is checked on first use (a recorded cosine below the tolerance gives it its own key).
    """
    from retrieval.embed.export import FP32_MIN_COSINE

    key = info.key + KEY_SUFFIX[precision]
    if precision == "fp32" and backend != "onnx" and agreement is not None:
        measured = agreement.get(f"{backend}-fp32")
        if measured is not None and measured < FP32_MIN_COSINE:
            key += f"|{backend}"
    return key


def runtime_encoder(
    info: ModelInfo, *, backend: str, precision: str, threads: int | None, batch_size: int, progress: bool
) -> OnnxEncoder:
    """A ready-to-load encoder for ``backend``/``precision``, exporting the model first if needed.

    The first call for a model exports it (importing torch, a few seconds); later calls and
    processes read the cache. Raises BackendUnavailableError or ExportError.
    """
    from retrieval.embed.export import ensure_export, read_meta, record_agreement

    check_backend(info, backend, precision)
    folder = ensure_export(info, "int8" if precision == "int8" else "fp32")
    meta = read_meta(folder) or {}
    agreement = dict(meta.get("agreement", {}))
    if backend != "onnx" and f"{backend}-{precision}" not in agreement:
        # Measured once per export, then read from meta.json (no torch needed: the
        # reference embeddings were saved at export time).
        agreement[f"{backend}-{precision}"] = record_agreement(info, folder, backend, precision)
    verdict = GATE_FAILED.get((backend, precision))
    if verdict:
        log.warning("backend %s with precision %s failed the quality gate (%s); expect worse results than fp32",
                    backend, precision, verdict)
    return build_runtime_encoder(info, backend=backend, precision=precision,
                                 model_key=runtime_key(info, backend, precision, agreement),
                                 folder=folder, threads=threads, batch_size=batch_size, progress=progress)


# ``auto``: the settings create_encoder tries, fastest first, as measured on the 2-core
# AVX512-BF16 development machine (bench/bench_encoders.md: openvino bf16 6.0x plain
# model.encode, openvino fp32 3.4x, onnx fp32 2.8x, torch 2.5x). Settings that failed the
# quality gate are never chosen automatically.
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("openvino", "bf16"),
    ("openvino", "fp32"),
    ("onnx", "fp32"),
    ("torch", "fp32"),
)
ALL_PRECISIONS = {**PRECISIONS, "torch": ("fp32",)}


def candidates(backend: str, precision: str, device: str = "cpu") -> list[tuple[str, str]]:
    """The (backend, precision) pairs to try for these settings, in order; torch fp32 last.

    ``auto`` in either place means "the fastest that passes the quality gate"; a fixed
    value is tried first and falls back to torch fp32 (the reference every key derives
    from) when its runtime or instruction set is missing.
    """
    if device != "cpu" and backend == "auto":
        return [("torch", "fp32")]  # an accelerator runs the torch model
    if backend != "auto" and precision != "auto":
        pairs = [(backend, precision)]
    else:
        pool = [pair for pair in AUTO_ORDER if pair not in GATE_FAILED]
        if backend != "auto":
            pool = [(b, p) for b, p in pool if b == backend]
        if precision != "auto":
            pool = [(b, p) for b, p in pool if p == precision]
            if not pool:  # e.g. precision int8 with backend auto: the one backend that runs it
                pool = [(b, precision) for b, ps in ALL_PRECISIONS.items() if precision in ps]
        pairs = pool
    return pairs + [("torch", "fp32")] if ("torch", "fp32") not in pairs else pairs


def plan(info: ModelInfo, backend: str, precision: str, *, device: str = "cpu",
         prefer_key: str | None = None) -> dict[str, Any]:
    """What ``create_encoder`` will use for these settings, without loading or exporting anything.

    ``backend``/``precision`` are what runs, ``model_key`` the key its vectors get, ``note``
    why: the fallback from an unavailable setting, or how ``auto`` chose. With ``auto``
    and a ``prefer_key`` (the key of the store's current index), a setting whose vectors
    have that key wins over a faster one that would need `retrieve reindex`: ``auto``
    never makes an existing index unusable.
    """
    from retrieval.embed.export import export_dir, is_exported, read_meta

    agreement = (read_meta(export_dir(info)) or {}).get("agreement") if info.path else None
    automatic = "auto" in (backend, precision)
    order = candidates(backend, precision, device)
    available: list[tuple[str, str, str]] = []  # backend, precision, key
    skipped: dict[tuple[str, str], str] = {}
    for b, p in order:
        if b == "torch" and p != "fp32":
            skipped[(b, p)] = f"torch runs fp32 only; use backend {'openvino' if p == 'bf16' else 'onnx'} for {p}"
            continue
        if b != "torch":
            try:
                check_backend(info, b, p)
            except BackendUnavailableError as exc:
                skipped[(b, p)] = str(exc)
                continue
        available.append((b, p, info.key if b == "torch" else runtime_key(info, b, p, agreement)))
    chosen = available[0]  # torch fp32 is always last and always available
    kept = False
    if automatic and prefer_key is not None and chosen[2] != prefer_key:
        for option in available:
            # Only among settings that honour the explicit half of the request: with
            # precision bf16 (backend auto) the user asked for bf16 vectors.
            honours = backend in ("auto", option[0]) and precision in ("auto", option[1])
            if honours and option[2] == prefer_key:
                chosen, kept = option, True
                break
    b, p, key = chosen
    notes = []
    if automatic and device != "cpu":
        notes.append(f"auto: device {device} runs the torch model")
    elif automatic and kept:
        notes.append(f"auto: {b} {p} matches the index's vectors; {available[0][0]} {available[0][1]} is faster "
                     "here (set backend and precision to it, then `retrieve reindex`)")
    elif automatic:
        notes.append("auto: the fastest setting here that passes the quality gate")
    # Why faster (or requested) settings were passed over.
    passed_over = [f"{sb} {sp} unavailable ({why})" for (sb, sp), why in skipped.items()
                   if order.index((sb, sp)) < order.index((b, p))]
    notes.extend(passed_over)
    if b != "torch" and not is_exported(info, "int8" if p == "int8" else "fp32"):
        notes.append("export runs on first use")
    return {"backend": b, "precision": p, "model_key": key, "note": "; ".join(notes) or None,
            "requested": f"{backend} {precision}", "passed_over": passed_over}
