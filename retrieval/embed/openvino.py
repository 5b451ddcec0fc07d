"""OpenVINO backend: the same exported ONNX graph, compiled by OpenVINO for the CPU.

OpenVINO reads ``model.onnx`` of the export folder directly. Its precision is a
compile-time hint: ``bf16`` runs matrix products in bfloat16 on CPUs with AVX512-BF16 or
AMX (about twice fp32's peak), ``fp32`` forces full precision. OpenVINO picks bf16 by
itself on such CPUs, so the hint is always set explicitly: fp32 must mean fp32, or the
vectors would not match torch's model key.

Tokenization, batching by token count, pooling and normalisation are the ONNX encoder's.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.embed.cpu import bf16_missing_reason, has_bf16, usable_cpus
from retrieval.embed.onnx import OnnxEncoder
from retrieval.errors import BackendUnavailableError

log = logging.getLogger("retrieval")


class OpenVINOEncoder(OnnxEncoder):
    """Encodes with OpenVINO on the CPU, in fp32 or bf16."""

    backend = "openvino"
    precisions = ("fp32", "bf16")

    @property
    def model_file(self) -> Path:
        # bf16 is a compile option, not a separate file.
        return self.export_dir / "model.onnx"

    def _make_runner(self) -> Any:
        try:
            import openvino as ov
        except ImportError as exc:
            raise BackendUnavailableError("openvino is not installed: pip install openvino") from exc
        if self.precision == "bf16" and not has_bf16():
            raise BackendUnavailableError(f"{bf16_missing_reason()}; use fp32")
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "INFERENCE_NUM_THREADS": self.threads,
            # One stream: a batch uses every thread; throughput comes from batching.
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # OpenVINO pins its threads to cores, counting from the first: two processes of
            # one thread each (Ray actors, say) then share core 0 and each runs at half
            # speed. Pinning only while the threads cover every usable CPU keeps them apart.
            "ENABLE_CPU_PINNING": self.threads >= usable_cpus(),
        }
        cache = self.export_dir / "openvino-cache"
        try:
            # OpenVINO keeps the compiled model here (keyed by graph, config, CPU and
            # version): a later process imports it in ~0.1 s instead of reading the
            # 90 MB ONNX file and compiling it again (~0.5 s), which is most of a cold
            # `retrieve search`. A stale or damaged entry is recompiled by OpenVINO.
            cache.mkdir(exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except OSError as exc:  # a read-only cache: compile every time
            log.info("openvino: no compile cache in %s (%s)", cache, exc)
        compiled = core.compile_model(str(self.model_file), "CPU", config)
        request = compiled.create_infer_request()
        names = [port.get_any_name() for port in compiled.inputs]
        output = compiled.outputs[0]
        lock = threading.Lock()  # an infer request serves one call at a time

        def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
            with lock:
                result = request.infer({k: feeds[k] for k in names})
                # The request reuses its output buffer: copy before the next batch.
                return np.array(result[output], dtype=np.float32, copy=True)

        return run
