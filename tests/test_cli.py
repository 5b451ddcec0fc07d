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


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_an_example(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0
    assert f"retrieve {name}" in result.output, f"{name} --help shows no example"


def test_bad_k_is_a_one_line_error(store_env) -> None:
    result = CliRunner().invoke(cli, ["search", "shoes", "-k", "100000"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: k must be between 1 and 1000 (max_k), got 100000"


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
