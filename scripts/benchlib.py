"""Helpers the benchmark and report scripts share (imported as ``benchlib``: a script's own
folder is first on ``sys.path`` when it runs)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def machine() -> str:
    """One line naming the machine a figure came from: cores, CPU model, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core {platform.machine()} CPU ({cpu}), no GPU, Python {platform.python_version()}"
