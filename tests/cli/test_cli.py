"""Every command has help with an example; errors are one line; heavy imports stay out."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from retrieval.cli import cli

COMMANDS = sorted(cli.commands)


def test_root_help_lists_commands_with_examples() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("ingest", "search", "get", "delete", "sync", "status", "verify", "reindex", "init", "config"):
        assert name in result.output
    assert "Examples:" in result.output
    # One example a line, as written (the epilog once printed a literal "\b" and ran them together).
    assert "\\b" not in result.output and "\n    retrieve init\n    retrieve ingest --sample\n" in result.output
    options = CliRunner().invoke(cli, ["--help"]).output
    assert "flat (exact, default)" not in options and "auto (default" in options


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert f"retrieve {name}" in result.output, f"{name} --help shows no example"


def test_bad_k_is_a_one_line_error(store_env) -> None:
    result = CliRunner().invoke(cli, ["search", "shoes", "-k", "100000"])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: k must be between 1 and 1000 (max_k), got 100000"


def test_argument_errors_have_one_exit_status_in_every_command(store_env, tmp_path) -> None:
    """A bad k, filter, mode or min_score is a usage error (exit 2) wherever it is given:
    `similar -k 0` once printed "No results." with exit 0 while `search -k 0` exited 1."""
    runner = CliRunner()
    assert runner.invoke(cli, ["ingest", "-"], input="two shoes\nred socks\n").exit_code == 0
    stored = runner.invoke(cli, ["search", "shoes", "--json"])
    some_id = __import__("json").loads(stored.output)["results"][0]["id"]
    for args, message in [
        (["search", "shoes", "-k", "0"], "k must be between 1 and 1000 (max_k), got 0"),
        (["similar", some_id, "-k", "0"], "k must be between 1 and 1000 (max_k), got 0"),
        (["search", "shoes", "--where", '{"n": {"$nope": 1}}'], "unknown operator"),
        (["similar", some_id, "--where", '{"a": {"$gt": []}}'], "$gt takes a number or a string"),
        (["search", "shoes", "--min-score", "nan"], "min_score must be a number, got nan"),
        (["search", "shoes", "--alpha", "0.5"], "alpha weighs the two rankings"),
        (["search", "   "], "the query is empty"),
    ]:
        result = runner.invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)


def test_status_does_not_import_torch(real_store_env) -> None:
    code = (
        "import sys\nfrom retrieval.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'sentence_transformers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code, "status"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "documents" in result.stdout


def test_debug_flag_shows_the_traceback(store_env) -> None:
    result = CliRunner().invoke(cli, ["--debug", "get", "missing"])
    assert result.exit_code != 0
    assert result.exception is not None and type(result.exception).__name__ == "NotFoundError"


@pytest.mark.parametrize("depth", [40, 200, 1000, 100_000])
def test_a_deeply_nested_filter_is_one_short_line(store_env, depth: int) -> None:
    where = '{"$and": [' * depth + '{"a": 1}' + "]}" * depth
    result = CliRunner().invoke(cli, ["search", "shoes", "--where", where])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output[-300:]
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and len(line) < 160, line
    assert "nested more than 32 levels deep" in line
