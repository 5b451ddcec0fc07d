"""Stores this process cannot write, searches that run too long, and Ctrl-C: one line, never
a traceback, and read-only commands keep working on a read-only store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import REPO
from tests.fixtures.databases import execute_sql

SAMPLE = REPO / "retrieval" / "sample" / "products.jsonl"


def _read_only_runner(folder: Path) -> list[str]:
    """A command prefix that runs its command with ``folder`` mounted read-only (a private
    mount namespace, as root), or nothing where that cannot be done."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return []
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind {folder} {folder} && "
                            f"mount -o remount,bind,ro {folder} && ! touch {folder}/.probe"],
                           capture_output=True)
    if probe.returncode != 0:
        return []
    return ["unshare", "-m", "sh", "-c", f'mount --bind {folder} {folder} && mount -o remount,bind,ro {folder} && '
            'exec "$@"', "sh"]


def test_a_store_on_a_read_only_mount_answers_read_only_commands(store_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(SAMPLE)]).exit_code == 0
    # A document another program wrote after the last sync: a search scores it exactly,
    # computing its vector without storing it.
    execute_sql(store_env["RETRIEVE_DATABASE_URL"],
                "INSERT INTO documents (external_id, text, metadata) VALUES ('late', 'A late kite for windy days', '{}')")
    store = tmp_path / "store"
    prefix = _read_only_runner(store)
    if not prefix:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a folder read-only here (needs unshare and mount as root)")
        for path in [store, *store.rglob("*")]:  # a user who is not root: the folder's permissions do it
            path.chmod(path.stat().st_mode & ~0o222)
    env = {**os.environ}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*prefix, sys.executable, "-m", "retrieval.cli", *args], env=env, capture_output=True,
                              text=True, timeout=120)

    try:
        found = run("search", "A late kite for windy days", "-k", "1")
        assert found.returncode == 0, found.stderr
        assert " late " in found.stdout and "Traceback" not in found.stderr
        assert run("search", "kite", "--mode", "keyword", "-k", "1").returncode == 0
        assert run("get", "p002").returncode == 0
        status = run("status")
        assert status.returncode == 0 and "pending changes  1\n" in status.stdout, status.stdout + status.stderr
        verify = run("verify")
        assert verify.returncode == 0 and "1 pending" in verify.stdout, verify.stdout + verify.stderr
        # Writing is refused in one line that says why.
        for args in (["ingest", str(SAMPLE)], ["delete", "p002"], ["sync"]):
            refused = run(*args)
            assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert "read-only" in refused.stderr or "cannot lock the index folder" in refused.stderr, refused.stderr
    finally:
        if not prefix:
            for path in [store, *store.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
    assert runner.invoke(cli, ["get", "p002"]).exit_code == 0  # nothing harmed


_LONG_QUERY = """
import signal
import sys
# A shell that starts the suite in the background (nohup, &) makes its children ignore
# SIGINT, and Python then never raises KeyboardInterrupt: take the interactive default.
signal.signal(signal.SIGINT, signal.default_int_handler)
from retrieval.errors import SearchTimeoutError
from retrieval.store import db
from retrieval.store.repository import Store

store = Store.open(sys.argv[1])
endless = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
if store.dialect == "postgresql":
    endless = "SELECT pg_sleep(3600)"
try:
    with db.deadline(float(sys.argv[2]) if len(sys.argv) > 2 else None), store.connection() as conn:
        print("started", flush=True)
        conn.exec_driver_sql(endless)
except SearchTimeoutError as exc:
    print("deadline:", exc, flush=True)
    sys.exit(3)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


@pytest.mark.both_databases
def test_a_search_statement_stops_at_its_deadline(database_url: str, db_backend: str) -> None:
    from retrieval.store.repository import Store

    Store.open(database_url).close()
    done = subprocess.run([sys.executable, "-c", _LONG_QUERY, database_url, "0.3"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "the search ran past its deadline (search_timeout_ms)" in done.stdout


def test_ctrl_c_stops_a_statement_running_in_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    from retrieval.store.repository import Store

    Store.open(url).close()
    proc = subprocess.Popen([sys.executable, "-c", _LONG_QUERY, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # never leave an endless query spinning after a failure
    assert proc.returncode == 130 and "interrupted" in out, out + err


def test_an_index_folder_this_user_cannot_write_is_refused_before_anything_is_stored(store_env: dict[str, str],
                                                                                      tmp_path: Path) -> None:
    """The database writable, the index folder not (another user's): ingest and delete once
    committed to the database, then printed a 60-line PermissionError traceback."""
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", str(SAMPLE)]).exit_code == 0
    index = tmp_path / "store" / "index"
    prefix = _read_only_runner(index)
    if not prefix:
        if os.geteuid() == 0:
            pytest.skip("cannot mount a folder read-only here (needs unshare and mount as root)")
        for path in [index, *index.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
    more = tmp_path / "more.jsonl"
    more.write_text('{"id": "kite", "text": "A kite for windy days"}\n', encoding="utf-8")
    try:
        for args in (["ingest", str(more)], ["delete", "p002"]):
            refused = subprocess.run([*prefix, sys.executable, "-m", "retrieval.cli", *args], env={**os.environ},
                                     capture_output=True, text=True, timeout=120)
            assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
            assert refused.stderr.strip().startswith("Error: cannot lock the index folder"), refused.stderr
            assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    finally:
        if not prefix:
            for path in [index, *index.rglob("*")]:
                path.chmod(path.stat().st_mode | 0o200)
    # Nothing was stored or deleted: the database is as it was.
    assert runner.invoke(cli, ["get", "kite"]).exit_code == 1
    assert runner.invoke(cli, ["get", "p002"]).exit_code == 0
    assert runner.invoke(cli, ["verify"]).exit_code == 0
