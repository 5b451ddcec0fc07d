"""What the CPU offers the encoders: instruction-set features and usable cores.

The backend chooser (:mod:`retrieval.embed.choice`) asks :func:`features` rather than
reading ``/proc/cpuinfo`` itself, so that its decisions can be reproduced on any machine:

* ``RETRIEVAL_HIDE_CPU_FEATURES=bf16`` hides features from the chooser (and from the
  OpenVINO encoder's own check), as if the CPU lacked them. A machine with native
  bfloat16 then behaves like one without: ``auto`` picks openvino fp32, and asking for
  bf16 falls back. The test suite sets it so that its expectations hold on every CPU, and
  unsets it where it exercises the bf16 path.
* :func:`retrieval.embed.choice.plan` also takes a ``features`` set directly, so both
  branches of the policy are tested everywhere, whatever the CPU under the tests has.

Features are named by what the encoders care about: ``bf16`` (AVX512-BF16 or AMX-BF16:
bfloat16 matrix products in hardware), ``avx512``, ``avx2``, ``amx`` and ``vnni``.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

from retrieval.errors import ConfigError

log = logging.getLogger("retrieval")

HIDE_ENV = "RETRIEVAL_HIDE_CPU_FEATURES"
KNOWN = ("bf16", "avx512", "avx2", "amx", "vnni")

# Which /proc/cpuinfo flags (x86) or Features (ARM) give each feature.
_FLAGS = {
    # x86 only: OpenVINO's bf16 path is measured (and the quality gate run) on these; an
    # ARM CPU's "bf16" Features flag is not taken as support until it is measured too.
    "bf16": ("avx512_bf16", "amx_bf16"),
    "avx512": ("avx512f",),
    "avx2": ("avx2",),
    "amx": ("amx_tile",),
    "vnni": ("avx512_vnni", "avx_vnni"),
}


@lru_cache(maxsize=1)
def detected() -> frozenset[str]:
    """Features the CPU reports, before any are hidden."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:  # pragma: no cover - not Linux: ask OpenVINO, which knows the CPU
        return _from_openvino()
    flags: set[str] = set()
    for line in info.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(name for name, wanted in _FLAGS.items() if flags.intersection(wanted))


def _from_openvino() -> frozenset[str]:  # pragma: no cover - exercised off Linux only
    try:
        import openvino as ov

        caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:
        return frozenset()
    return frozenset({"bf16"} if "BF16" in caps else set())


def hidden(environ: dict[str, str] | None = None) -> frozenset[str]:
    """Features hidden by :data:`HIDE_ENV` (comma- or space-separated names)."""
    raw = (os.environ if environ is None else environ).get(HIDE_ENV, "")
    names = frozenset(part.strip().lower() for part in raw.replace(",", " ").split() if part.strip())
    unknown = sorted(names - set(KNOWN))
    if unknown:
        raise ConfigError(f"{HIDE_ENV}: unknown CPU feature {unknown[0]!r} (known: {', '.join(KNOWN)})")
    return names


def features() -> frozenset[str]:
    """The CPU's features as the encoders see them: detected, minus the hidden ones."""
    return detected() - hidden()


def has_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (otherwise OpenVINO would emulate it slowly)."""
    return "bf16" in features()


def bf16_missing_reason() -> str:
    """Why bf16 is unavailable, in the words status and errors use."""
    if "bf16" in detected():
        return f"bf16 is hidden by {HIDE_ENV}"
    return "this CPU has no native bfloat16 (AVX512-BF16 or AMX)"


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
