"""A picklable description of an encoder, for processes on other machines.

The driver (the process that reads the store) builds its encoder as usual, then pins
what ``auto`` chose there: an :class:`EncoderSpec` carries the configured model name
(each machine resolves it to its own copy of the files), the backend and precision that
run on the driver, the threads each worker may use, and the model key the driver's
vectors get. A worker builds its encoder from the spec with :meth:`EncoderSpec.build`
and reports what it built with :meth:`EncoderSpec.describe`; a worker whose key differs
(another CPU without bfloat16 falling back to fp32, other model files) must not
contribute a single vector, since vectors with different keys never share an index.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from retrieval.embed.base import Encoder


@dataclass(frozen=True)
class EncoderSpec:
    model: str  # as configured: a name, or a path each machine resolves itself
    backend: str  # what runs on the driver, never "auto"
    precision: str
    model_key: str  # the key of the driver's vectors: every worker must match it
    dim: int
    threads: int | None = None
    batch_size: int = 64
    device: str = "cpu"

    @classmethod
    def pinned(cls, encoder: Encoder, model: str, *, threads: int | None, device: str = "cpu") -> EncoderSpec:
        """The spec of ``encoder`` (built from ``model``), with its backend and precision
        fixed so that no worker makes a choice of its own."""
        backend = "auto" if encoder.backend == "hash" else encoder.backend
        precision = "auto" if encoder.backend == "hash" else encoder.precision
        return cls(model=model, backend=backend, precision=precision, model_key=encoder.model_key, dim=encoder.dim,
                   threads=threads, batch_size=encoder.batch_size, device=device)

    def build(self) -> Encoder:
        """The encoder this spec describes, built here (it loads on first use)."""
        from retrieval.embed.factory import create_encoder

        return create_encoder(self.model, device=self.device, batch_size=self.batch_size, progress=False,
                              backend=self.backend, precision=self.precision, threads=self.threads)

    def plan(self) -> Any:
        """What :meth:`build` would run here and the key it would give, without building
        anything (no export, no model load): an :class:`~retrieval.embed.choice.EncoderPlan`."""
        from retrieval.embed.choice import plan
        from retrieval.embed.model import resolve_model

        return plan(resolve_model(self.model), self.backend, self.precision, device=self.device)

    def describe(self, encoder: Encoder | None = None) -> dict[str, Any]:
        """What a worker built (or, without ``encoder``, would build): its key, runtime,
        why it fell back, and where it runs."""
        from retrieval.embed import cpu

        if encoder is None:
            planned = self.plan()
            key, backend, precision, fallback = planned.model_key, planned.backend, planned.precision, planned.note
        else:
            key, backend, precision, fallback = encoder.model_key, encoder.backend, encoder.precision, encoder.fallback
        return {"model_key": key, "backend": backend, "precision": precision, "fallback": fallback,
                "host": socket.gethostname(), "pid": os.getpid(), "cpu_features": sorted(cpu.features()),
                "matches": key == self.model_key}
