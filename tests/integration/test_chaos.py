"""Crash safety shown by real kills (a bounded version of scripts/chaos.py), the damaged
index, full disk and locked database cases, and `retrieve selftest --crash`.

Every kill is a SIGKILL of a real `python -m retrieval ...` process on a real SQLite
store (and, for the killed operations, on a real PostgreSQL database too); after each one the store must hold everything reported as stored, `verify` must
find no drift and searches must find every document's latest text. The restart sync runs
in this process to keep the run short; scripts/chaos.py and `retrieve selftest` run it as
a process. The store uses the test encoder (hash-384): what is checked is storage,
indexing and recovery, not meaning, and every killed child starts in a fraction of a
second instead of loading a language model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.selftest import OPERATIONS, ChaosReport, run_chaos, worker_available
from tests.conftest import HASH

# The extended suite: run by .ci/run after the README's test command (pytest -m extended).
pytestmark = pytest.mark.extended

SEED = 20_260_101  # fixed, so that a failure names a reproducible sequence of kill plans


def _assert_clean(report: ChaosReport) -> None:
    summary = report.table()
    assert report.failures == [], summary
    assert report.documents_lost == 0, summary
    assert report.drift_found == 0, summary
    assert report.ok, summary


@pytest.mark.both_databases
def test_killed_operations_lose_nothing_and_leave_no_drift(tmp_path: Path, db_backend: str,
                                                          request: pytest.FixtureRequest) -> None:
    where = {"database_url": request.getfixturevalue("new_postgres_database")()} if db_backend == "postgresql" else {}
    # Every operation is killed at least twice on SQLite, and once on PostgreSQL (whose
    # store code is also killed mid-ingest in tests/store/test_postgres.py): the suite's budget.
    iterations = 10 if db_backend == "sqlite" else 6
    report = run_chaos(tmp_path / "chaos", iterations=iterations, seed=SEED, operations=OPERATIONS, special_cases=(),
                       restart="in-process", model=HASH, **where)
    _assert_clean(report)
    assert report.total_kills >= iterations * 5 // 6, report.table()
    expected_ops = set(OPERATIONS) if worker_available() else set(OPERATIONS) - {"worker"}
    assert {op for op, n in report.kills.items() if n} == expected_ops, report.table()
    assert report.documents > 0


def test_truncated_or_garbage_index_is_detected_and_rebuilt(tmp_path: Path) -> None:
    cases = ("truncated-index", "garbage-index", "garbage-manifest")
    report = run_chaos(tmp_path / "chaos", iterations=0, seed=SEED, special_cases=cases, restart="in-process", model=HASH)
    _assert_clean(report)
    assert report.special_cases == {name: "ok" for name in cases}


def test_disk_full_during_an_index_write_keeps_the_previous_version(tmp_path: Path) -> None:
    report = run_chaos(tmp_path / "chaos", iterations=0, seed=SEED, special_cases=("disk-full",), restart="in-process", model=HASH)
    _assert_clean(report)
    assert report.special_cases == {"disk-full": "ok"}


def test_database_locked_longer_than_the_busy_timeout(tmp_path: Path) -> None:
    report = run_chaos(tmp_path / "chaos", iterations=0, seed=SEED, special_cases=("database-locked",),
                       restart="in-process", model=HASH)
    _assert_clean(report)
    assert report.special_cases == {"database-locked": "ok"}


def test_selftest_crash_runs_on_a_scratch_copy_of_the_configuration(
    store_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import retrieval.selftest as chaos
    from retrieval.cli import cli

    seen: dict[str, Any] = {}
    real = chaos.run_chaos

    def bounded(store_dir: Any, **kwargs: Any) -> ChaosReport:
        # The special cases have their own tests above; here only the wiring matters.
        seen.update(kwargs, store_dir=Path(store_dir))
        return real(store_dir, **{**kwargs, "operations": ("sync",), "special_cases": ()})

    monkeypatch.setattr(chaos, "run_chaos", bounded)
    monkeypatch.setenv("RETRIEVE_SEARCH_K", "7")
    result = CliRunner().invoke(cli, ["selftest", "--crash", "--iterations", "1", "--seed", "3",
                                      "--restart", "in-process", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["ok"] is True and data["total_kills"] == 1 and data["seed"] == 3
    # The user's settings, but not the user's store: nothing was created there.
    assert seen["settings"].search.k == 7
    assert seen["iterations"] == 1
    assert not (tmp_path / "store").exists()
    assert not seen["store_dir"].exists()  # the scratch folder is removed afterwards


def test_selftest_without_a_test_says_what_to_choose() -> None:
    from retrieval.cli import cli

    result = CliRunner().invoke(cli, ["selftest"])
    assert result.exit_code == 2
    assert "--crash" in result.output
