"""Embedding on a Ray cluster: one actor per worker slot, each holding one encoder.

Each actor builds its encoder once, from the driver's :class:`EncoderSpec` (so the
model loads once per actor, not per batch), and embeds the batches the driver sends
it. Before any batch is sent, every actor reports what it built; a cluster where one
would produce vectors under another model key is refused, so an index never mixes them.

An actor whose process dies (killed, out of memory) is restarted by Ray and the batch
it held is sent again; the driver commits vectors insert-or-ignore, so a batch done
twice is stored once. Nothing here touches the store or the index.

This module imports Ray: it is imported only when the ``ray`` executor is chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

from retrieval.embed.base import Encoder
from retrieval.embed.spec import EncoderSpec
from retrieval.errors import ModelMismatchError, RetrievalError
from retrieval.executors import EmbedPool, T

# A process that dies this often in one run is not a passing fault: the run stops.
MAX_RESTARTS = 8
MAX_TASK_RETRIES = 4
# Batches queued per actor: one running, one waiting, so an actor never idles between two.
IN_FLIGHT_PER_ACTOR = 2


class EmbedActor:
    """A Ray actor's state: the encoder its spec describes, built on first use."""

    def __init__(self, spec: EncoderSpec) -> None:
        self.spec = spec
        self._encoder: Encoder | None = None

    def _built(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self.spec.build()
        return self._encoder

    def describe(self) -> dict[str, Any]:
        """What this actor builds. Its plan is checked first: an actor that would give
        other vectors reports so without exporting or loading anything; one that
        matches builds and loads its encoder now (which may still fall back)."""
        planned = self.spec.describe()
        if not planned["matches"]:
            return planned
        encoder = self._built()
        if encoder.model_key == self.spec.model_key:
            encoder.load()
        return self.spec.describe(encoder)

    def embed(self, texts: list[str]) -> np.ndarray:
        encoder = self._built()
        if encoder.model_key != self.spec.model_key:  # after a restart on another node
            raise ModelMismatchError(f"this actor builds {encoder.model_key}, not {self.spec.model_key}")
        return encoder.encode(texts, progress=False)

    def pid(self) -> int:
        return os.getpid()


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (None: start a local one, or use ``RAY_ADDRESS``).
    Returns whether this call connected (and the caller should disconnect)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if address else "(a local one)"
        raise RetrievalError(f"cannot start or reach the Ray cluster {where}: {_first_line(exc)}") from exc
    return True


def cluster_cpus() -> int:
    return int(ray.cluster_resources().get("CPU", 0))


class RayPool(EmbedPool):
    """``actors`` Ray actors of ``spec.threads`` CPUs each (default: as many as fit)."""

    def __init__(self, spec: EncoderSpec, *, address: str | None = None, actors: int | None = None,
                 runtime_env: dict[str, Any] | None = None, start_timeout_s: float = 600.0) -> None:
        self.spec = spec
        self.model_key = spec.model_key
        self.dim = spec.dim
        self._connected = connect(address)
        self.actors: list[Any] = []
        try:
            threads = spec.threads or 1
            cpus = cluster_cpus()
            n = actors if actors is not None else max(1, cpus // threads)
            if n * threads > cpus:
                raise RetrievalError(f"{n} actors of {threads} CPU(s) each need {n * threads} CPUs, but the Ray cluster "
                                     f"has {cpus}: lower ray_actors or ray_threads, or add nodes")
            remote = ray.remote(EmbedActor).options(
                num_cpus=threads, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
                runtime_env=runtime_env)
            self.actors = [remote.remote(spec) for _ in range(n)]
            self.workers = n
            self.workers_info = self._describe(start_timeout_s)
        except BaseException:
            self.close()
            raise

    def _describe(self, timeout_s: float) -> list[dict[str, Any]]:
        try:
            infos: list[dict[str, Any]] = ray.get([a.describe.remote() for a in self.actors], timeout=timeout_s)
        except GetTimeoutError as exc:
            raise RetrievalError(f"the Ray cluster did not start {len(self.actors)} actors within {timeout_s:.0f}s") from exc
        except RayError as exc:
            raise RetrievalError(f"a Ray actor could not build the encoder: {_task_error(exc)}") from exc
        if not all(i["matches"] for i in infos):
            raise ModelMismatchError(mismatch_message(self.spec, infos))
        return infos

    def pids(self) -> list[int]:
        """The process id of each actor (tests kill them)."""
        return list(ray.get([a.pid.remote() for a in self.actors]))

    def map(self, batches: Iterable[tuple[T, list[str]]]) -> Iterator[tuple[T, np.ndarray]]:
        source = iter(batches)
        in_flight: dict[Any, tuple[T, int]] = {}

        def submit(actor: int) -> bool:
            item = next(source, None)
            if item is None:
                return False
            tag, texts = item
            in_flight[self.actors[actor].embed.remote(texts)] = (tag, actor)
            return True

        more = True
        for _ in range(IN_FLIGHT_PER_ACTOR):
            for actor in range(len(self.actors)):
                more = more and submit(actor)
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            tag, actor = in_flight.pop(ready[0])
            try:
                vectors = ray.get(ready[0])
            except RayActorError as exc:
                raise RetrievalError(f"a Ray actor died more than {MAX_TASK_RETRIES} times on one batch: "
                                     f"{_first_line(exc)}") from exc
            except RayTaskError as exc:
                raise RetrievalError(f"embedding on the Ray cluster failed: {_task_error(exc)}") from exc
            more = more and submit(actor)
            yield tag, vectors

    def close(self) -> None:
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._connected:
            ray.shutdown()
            self._connected = False


def mismatch_message(spec: EncoderSpec, infos: list[dict[str, Any]]) -> str:
    """Why a cluster is refused: which actors would produce which key, and what to do."""
    odd = [i for i in infos if i["model_key"] != spec.model_key]
    first = odd[0]
    why = f" ({first['fallback']})" if first.get("fallback") else ""
    return (f"the Ray cluster would mix model keys: the driver pinned {spec.backend} {spec.precision} "
            f"(vectors {spec.model_key}), but {len(odd)} of {len(infos)} actors build {first['backend']} "
            f"{first['precision']} (vectors {first['model_key']}) on host {first['host']}{why}; vectors with "
            "different keys cannot share an index, so nothing was embedded. Give every node the same model files and "
            "CPU features, or pin a backend and precision every node runs (for example precision: fp32)")


def _task_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    return _first_line(cause if isinstance(cause, BaseException) else exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("ray::", "Traceback")):
            return line.strip()
    return type(exc).__name__
