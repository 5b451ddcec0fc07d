"""The README's Python example and test command are true."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def test_python_example_runs_and_prints_the_documented_score(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder) -> None:
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETRIEVE_PROGRESS", "false")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    doc, score, text = out.getvalue().split(" ", 2)
    # The score the README shows (0.6649 in fp32; the last digit may differ by CPU and runtime).
    assert doc == "p2" and abs(float(score) - 0.6649) < 0.001 and text.startswith("High-performance running shoes")


def test_ci_runs_the_readme_test_command() -> None:
    command = "bash scripts/setup.sh && .venv/bin/python -m pytest -q"
    assert command in README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci


def test_the_readmes_filter_example_finds_something_on_the_sample(store_env) -> None:
    """It once filtered for footwear under 100 on a sample whose only footwear costs 129."""
    import json
    import shlex

    from click.testing import CliRunner

    from retrieval.cli import cli

    line = next(x for x in README.read_text().splitlines() if x.startswith("retrieve search") and "--where" in x)
    args = shlex.split(line.split("#")[0])[1:]
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "--sample"]).exit_code == 0
    found = runner.invoke(cli, [*args, "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["results"]
    assert hits and all(h["metadata"]["category"] == "clothing" and h["metadata"]["price"] < 50 for h in hits)
