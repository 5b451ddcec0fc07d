"""Settings: precedence, provenance, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.config import Settings, load_settings
from retrieval.errors import ConfigError


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.database_url == "sqlite:///data/retrieval.db"
    assert s.model == "all-MiniLM-L6-v2" and s.index_type == "auto" and s.search_k == 5
    assert all(src == "default" for _, _, src in s.describe())


def test_precedence_flag_env_explicit_file_local_file_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("batch_size: 8\nsearch_k: 7\nmax_k: 50\nmodel: local-model\n")
    other = tmp_path / "conf" / "other.yaml"
    other.parent.mkdir()
    other.write_text("search_k: 9\nmodel: file-model\nindex_dir: idx\n")
    env = {"RETRIEVE_MODEL": "env-model", "RETRIEVE_CONFIG": str(other)}
    s = load_settings(environ=env, cwd=tmp_path, overrides={"batch_size": None})
    assert s.batch_size == 8 and s.sources["batch_size"] == "./config.yaml"
    assert s.search_k == 9 and s.sources["search_k"] == str(other)
    assert s.model == "env-model" and s.sources["model"] == "env RETRIEVE_MODEL"
    # A relative path in a config file is relative to that file's folder.
    assert s.index_dir == str(other.parent.resolve() / "idx")
    s = load_settings(environ=env, cwd=tmp_path, overrides={"model": "flag-model"})
    assert s.model == "flag-model" and s.sources["model"] == "flag --model"
    # --config wins over RETRIEVE_CONFIG
    third = tmp_path / "third.yaml"
    third.write_text("search_k: 3\n")
    assert load_settings(third, environ=env, cwd=tmp_path).search_k == 3


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("bach_size: 3\n", {}, "unknown setting 'bach_size'"),
        ("batch_size: many\n", {}, "batch_size in ./config.yaml: expected an integer, got string 'many'"),
        ("progress: 3\n", {}, "progress in ./config.yaml: expected true or false, got integer 3"),
        ("index_type: ivf\n", {}, "index_type: must be one of auto, flat, hnsw"),
        ("- a list\n", {}, "expected a mapping of settings"),
        ("a: [unclosed\n", {}, "not valid YAML"),
        ("", {"RETRIEVE_BATCH_SIZE": "x"}, "batch_size in env RETRIEVE_BATCH_SIZE: expected an integer"),
        ("", {"RETRIEVE_NOPE": "1"}, "unknown setting in environment variable RETRIEVE_NOPE"),
        ("search_k: 0\n", {}, "search_k: must be at least 1"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env, cwd=tmp_path)
    assert message in str(info.value)


def test_env_values_are_typed(tmp_path: Path) -> None:
    s = load_settings(environ={"RETRIEVE_BATCH_SIZE": "16", "RETRIEVE_MIN_SCORE": "0.25", "RETRIEVE_PROGRESS": "false"}, cwd=tmp_path)
    assert (s.batch_size, s.min_score, s.progress) == (16, 0.25, False)


def test_the_shipped_config_yaml_lists_every_setting_with_its_default() -> None:
    import yaml

    shipped = Path(__file__).resolve().parent.parent / "config.yaml"
    values = yaml.safe_load(shipped.read_text())
    defaults = {name: value for name, value, _ in Settings().describe()}
    assert values == defaults


def test_retrieve_config_command_shows_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("search_k: 4\n")
    monkeypatch.setenv("RETRIEVE_BATCH_SIZE", "32")
    result = CliRunner().invoke(cli, ["--model", "m", "config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["search_k"] == {"value": 4, "source": "./config.yaml"}
    assert data["batch_size"] == {"value": 32, "source": "env RETRIEVE_BATCH_SIZE"}
    assert data["model"] == {"value": "m", "source": "flag --model"}
    assert data["index_type"]["source"] == "default"
    human = CliRunner().invoke(cli, ["config"])
    assert "(./config.yaml)" in human.output
    bad = CliRunner().invoke(cli, ["--config", str(tmp_path / "missing.yaml"), "config"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
