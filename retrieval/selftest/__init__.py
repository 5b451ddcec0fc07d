"""Crash safety shown by real kills: the harness behind `retrieve selftest --crash`,
``scripts/chaos.py`` and ``tests/integration/test_chaos.py`` (see :mod:`retrieval.selftest.harness`),
and its fault-injection hook (``hook/sitecustomize.py``)."""

from retrieval.selftest.harness import HOOK_DIR, OPERATIONS, SPECIAL_CASES, run_chaos
from retrieval.selftest.report import ChaosReport
from retrieval.selftest.scratch import remove_scratch, scratch_settings, worker_available

__all__ = ["HOOK_DIR", "OPERATIONS", "SPECIAL_CASES", "ChaosReport", "remove_scratch", "run_chaos",
           "scratch_settings", "worker_available"]
