"""Which encoder runs: the backend-choice policy, in one place.

``backend``/``precision`` ``auto`` take the fastest setting that passed the quality gate
on this machine, in the order measured on the development machine; a setting named
explicitly is tried first and falls back to torch fp32 (the reference every model key
derives from). An existing index is never made unusable: with ``auto`` and the key of
the store's current index, a setting whose vectors have that key wins over a faster one.

:func:`plan` decides without loading or exporting anything, so ``retrieve status`` can
say what would run and why. It reads the CPU's features from :mod:`retrieval.embed.cpu`
unless given a ``features`` set: tests pass both a set with ``bf16`` and one without, so
that both branches are exercised on every machine.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

from retrieval.embed import cpu
from retrieval.embed.export import FP32_MIN_COSINE, export_dir, is_exported, read_meta
from retrieval.embed.hashing import NOT_A_LANGUAGE_MODEL
from retrieval.embed.layout import ModelLayout
from retrieval.embed.model import ModelInfo
from retrieval.errors import BackendUnavailableError

# Key suffixes: vectors that measurably differ from torch fp32 never share its key.
KEY_SUFFIX = {"fp32": "", "bf16": "|bf16", "int8": "|int8"}
RUNTIME_MODULE = {"onnx": "onnxruntime", "openvino": "openvino"}
PRECISIONS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16")}
ALL_PRECISIONS = {**PRECISIONS, "torch": ("fp32",)}

# Quality gate (scripts/quality_gate.py, all-MiniLM-L6-v2): settings that lost more than
# 0.002 nDCG@10 (cranfield, medline) or Spearman (stsb) against torch fp32. They are
# never the default and warn when chosen.
GATE_FAILED: dict[tuple[str, str], str] = {
    # bench/quality_gate.md, 2026-11-27: cranfield -0.0035, stsb -0.0023 (medline +0.0112)
    ("onnx", "int8"): "cranfield nDCG@10 -0.0035 and STS-B Spearman -0.0023 against torch fp32",
}

# ``auto``: the settings tried, fastest first, as measured on the 2-core AVX512-BF16
# development machine (bench/bench_encoders.md: openvino bf16 6.0x plain model.encode,
# openvino fp32 3.4x, onnx fp32 2.8x, torch 2.5x). Settings that failed the quality gate
# are never chosen automatically.
AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("openvino", "bf16"),
    ("openvino", "fp32"),
    ("onnx", "fp32"),
    ("torch", "fp32"),
)


@dataclass(frozen=True)
class EncoderPlan:
    """What runs for a model and settings, and why.

    ``backend``/``precision`` are what runs (torch after a fallback), ``model_key`` the
    key its vectors get, ``note`` why (a fallback, or how ``auto`` chose), ``requested``
    what the settings asked for and ``passed_over`` the faster or requested settings that
    cannot run here, each with its reason.
    """

    backend: str
    precision: str
    model_key: str
    note: str | None
    requested: str
    passed_over: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed_over"] = list(self.passed_over)
        return data


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


def check_backend(info: ModelInfo, backend: str, precision: str, features: Collection[str] | None = None) -> None:
    """Cheap checks (no runtime imported) that ``backend`` can run ``precision`` for this
    model on a CPU with ``features`` (default: this one's, minus hidden ones)."""
    if precision not in PRECISIONS.get(backend, ()):
        other = [b for b, ps in PRECISIONS.items() if precision in ps]
        hint = f"; use backend {other[0]}" if other else ""
        raise BackendUnavailableError(f"backend {backend} does not run {precision} on this CPU{hint}")
    module = RUNTIME_MODULE[backend]
    if importlib.util.find_spec(module) is None:
        raise BackendUnavailableError(f"{module} is not installed (pip install {module})")
    if info.path is None:
        raise BackendUnavailableError(f"model {info.name!r} is not a local directory")
    ModelLayout.read(info.path)
    if backend == "openvino" and precision == "bf16" and "bf16" not in (cpu.features() if features is None else features):
        raise BackendUnavailableError(cpu.bf16_missing_reason() if features is None
                                      else "this CPU has no native bfloat16 (AVX512-BF16 or AMX)")


def runtime_key(info: ModelInfo, backend: str, precision: str, agreement: dict[str, float] | None = None) -> str:
    """The model key of a backend's vectors.

    fp32 shares torch's key: ONNX fp32 was checked against torch at export, OpenVINO fp32
    is checked on first use (a recorded cosine below the tolerance gives it its own key).
    """
    key = info.key + KEY_SUFFIX[precision]
    if precision == "fp32" and backend != "onnx" and agreement is not None:
        measured = agreement.get(f"{backend}-fp32")
        if measured is not None and measured < FP32_MIN_COSINE:
            key += f"|{backend}"
    return key


def plan(info: ModelInfo, backend: str, precision: str, *, device: str = "cpu", prefer_key: str | None = None,
         features: Collection[str] | None = None) -> EncoderPlan:
    """What the factory will build for these settings, without loading or exporting anything.

    With ``auto`` and a ``prefer_key`` (the key of the store's current index), a setting
    whose vectors have that key wins over a faster one that would need `retrieve
    reindex`: ``auto`` never makes an existing index unusable. ``features`` stands for
    the CPU's (see :mod:`retrieval.embed.cpu`).
    """
    requested = f"{backend} {precision}"
    if info.kind == "external":
        return EncoderPlan("external", "fp32", info.key, f"{info.name}: the caller's vectors; this store embeds nothing",
                           requested)
    if not info.is_language_model:
        return EncoderPlan("hash", "fp32", info.key, f"{info.name} is {NOT_A_LANGUAGE_MODEL}", requested)
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
                check_backend(info, b, p, features)
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
    passed_over = tuple(f"{sb} {sp} unavailable ({why})" for (sb, sp), why in skipped.items()
                        if order.index((sb, sp)) < order.index((b, p)))
    notes.extend(passed_over)
    if b != "torch" and not is_exported(info, "int8" if p == "int8" else "fp32"):
        notes.append("export runs on first use")
    return EncoderPlan(b, p, key, "; ".join(notes) or None, requested, passed_over)
