"""A cold `retrieve search` encodes its query in a forked child (retrieval.cli.prefetch) and
answers exactly what the in-process path answers; when the child cannot help, the
parent encodes as usual."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SEED
from tests.fixtures.stores import write_jsonl

QUERY = "What are good shoes for jogging?"
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the forked prefetch is Linux only")


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrieval", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture
def env(real_store_env: dict[str, str], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    data = write_jsonl(tmp_path / "seed.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert CliRunner().invoke(cli, ["ingest", str(data)]).exit_code == 0
    # The session's export cache, so that the child finds the exported model.
    return {**os.environ, **real_store_env, "HF_HUB_OFFLINE": "1",
            "XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "xdg-cache")}


def _results(output: str) -> list[tuple[str, float]]:
    return [(r["id"], r["score"]) for r in json.loads(output)["results"]]


def test_forked_child_answers_what_the_in_process_path_answers(env: dict[str, str], tmp_path: Path, encoder: Any) -> None:
    in_process = CliRunner().invoke(cli, ["search", QUERY, "-k", "4", "--json"])
    assert in_process.exit_code == 0, in_process.output
    expected = _results(in_process.output)

    out = _run(env, tmp_path, "-v", "search", QUERY, "-k", "4", "--json")
    assert out.returncode == 0, out.stderr
    if getattr(encoder, "backend", "torch") == "torch":
        pytest.skip("the default encoder here is torch: the child does not run it")
    assert "query encoded in a forked child" in out.stderr
    got = _results(out.stdout)
    assert [i for i, _ in got] == [i for i, _ in expected] and got[0][0] == "d1"
    assert all(abs(a - b) < 1e-5 for (_, a), (_, b) in zip(got, expected))


def test_without_the_child_the_parent_encodes(env: dict[str, str], tmp_path: Path) -> None:
    off = _run({**env, "RETRIEVAL_PREFETCH": "0"}, tmp_path, "-v", "search", QUERY, "-k", "1", "--json")
    assert off.returncode == 0, off.stderr
    assert "forked child" not in off.stderr and _results(off.stdout)[0][0] == "d1"


def test_a_child_without_an_export_skips_and_the_parent_answers(env: dict[str, str], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli.prefetch import SKIPPED, _child
    from retrieval.config import load_settings

    # The child's decision, in this process: with an empty cache it skips before building
    # an encoder (which would export, importing torch, in the child).
    empty = tmp_path / "empty-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))
    read_fd, write_fd = os.pipe()
    try:
        assert _child(load_settings(), QUERY, write_fd) == SKIPPED
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert not empty.exists() or not any(empty.rglob("*.onnx"))  # nothing was exported

    # A real cold process whose child cannot help (the test encoder needs none): the
    # parent encodes and answers, and says so.
    folder = tmp_path / "hashed"
    hashed = {**env, "RETRIEVE_MODEL": "hash-384", "RETRIEVE_DATABASE_URL": f"sqlite:///{folder / 'r.db'}",
              "RETRIEVE_INDEX_DIR": str(folder / "index")}
    data = write_jsonl(tmp_path / "seed2.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    assert _run(hashed, tmp_path, "ingest", str(data)).returncode == 0
    cold = _run(hashed, tmp_path, "-v", "search", "running shoes", "-k", "1", "--json")
    assert cold.returncode == 0, cold.stderr
    assert "in-process (the child skipped or failed)" in cold.stderr and _results(cold.stdout)[0][0] == "d1"


def test_errors_are_reported_by_the_parent(env: dict[str, str], tmp_path: Path) -> None:
    out = _run(env, tmp_path, "search", "   ")
    assert out.returncode == 2 and "the query is empty" in out.stderr
    missing = _run({**env, "RETRIEVE_MODEL": str(tmp_path / "no-such-model")}, tmp_path, "search", QUERY)
    assert missing.returncode != 0 and "no-such-model" in missing.stderr
    assert "Traceback" not in missing.stderr
