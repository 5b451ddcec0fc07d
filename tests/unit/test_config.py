"""Settings: groups, precedence, provenance, the old flat names, and clear errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.config import FLAT, Settings, load_settings
from retrieval.errors import ConfigError
from tests.conftest import REPO


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(environ={}, cwd=tmp_path)
    assert s.store.database_url == "sqlite:///data/retrieval.db"
    assert s.encoder.model == "all-MiniLM-L6-v2" and s.index.type == "auto" and s.search.k == 5
    assert all(src == "default" for _, _, src in s.describe())


def test_precedence_flag_env_explicit_file_local_file_default(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("encoder:\n  batch_size: 8\n  model: local-model\nsearch:\n  k: 7\n  max_k: 50\n")
    other = tmp_path / "conf" / "other.yaml"
    other.parent.mkdir()
    other.write_text("search:\n  k: 9\nencoder:\n  model: file-model\nstore:\n  index_dir: idx\n")
    env = {"RETRIEVE_MODEL": "env-model", "RETRIEVE_CONFIG": str(other)}
    s = load_settings(environ=env, cwd=tmp_path, overrides={"batch_size": None})
    assert s.encoder.batch_size == 8 and s.sources["encoder.batch_size"] == "./config.yaml"
    assert s.search.k == 9 and s.sources["search.k"] == str(other)
    assert s.encoder.model == "env-model" and s.sources["encoder.model"] == "env RETRIEVE_MODEL"
    # A relative path in a config file is relative to that file's folder.
    assert s.store.index_dir == str(other.parent.resolve() / "idx")
    s = load_settings(environ=env, cwd=tmp_path, overrides={"model": "flag-model"})
    assert s.encoder.model == "flag-model" and s.sources["encoder.model"] == "flag --model"
    # --config wins over RETRIEVE_CONFIG
    third = tmp_path / "third.yaml"
    third.write_text("search:\n  k: 3\n")
    assert load_settings(third, environ=env, cwd=tmp_path).search.k == 3


def test_a_config_file_in_the_flat_form_still_loads_with_a_notice(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "config.yaml").write_text("batch_size: 8\nsearch_k: 7\nindex_type: flat\nindex.hnsw_m: 16\n")
    with caplog.at_level(logging.WARNING, logger="retrieval"):
        s = load_settings(environ={}, cwd=tmp_path)
    assert (s.encoder.batch_size, s.search.k, s.index.type, s.index.hnsw_m) == (8, 7, "flat", 16)
    notices = [r.getMessage() for r in caplog.records]
    assert "./config.yaml: setting 'search_k' is now 'search.k' (the old name still works)" in notices
    assert len(notices) == 3  # one line per old name; the dotted key is no old name


VALID = {"index_type": "flat", "backend": "auto", "precision": "auto", "device": "cpu", "executor": "local",
         "min_recall": "0.5", "merge_max_tombstones": "0.5", "merge_segments_per_tier": "3", "threads": "2",
         "ray_actors": "2", "min_score": "0.5", "chunk_tokens": "128", "merge_memory_mb": "512", "publish": "wait"}


def test_every_environment_variable_keeps_its_name() -> None:
    """Scripts and deployments set RETRIEVE_* variables by the flat names: all still work."""
    defaults = Settings()
    for flat, name in FLAT.items():
        value = defaults.get(name)
        raw = VALID.get(flat) or ("false" if isinstance(value, bool) else "7" if isinstance(value, int)
                                  else "0.5" if isinstance(value, float) else "x")
        s = load_settings(environ={f"RETRIEVE_{flat.upper()}": raw}, cwd=Path("/"))
        assert s.sources[name] == f"env RETRIEVE_{flat.upper()}", flat


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("encoder:\n  bach_size: 3\n", {}, "unknown setting 'encoder.bach_size'"),
        ("bach_size: 3\n", {}, "unknown setting 'bach_size'"),
        ("encoder:\n  batch_size: many\n", {}, "encoder.batch_size in ./config.yaml: expected an integer, got string 'many'"),
        ("ingest:\n  progress: 3\n", {}, "ingest.progress in ./config.yaml: expected true or false, got integer 3"),
        ("index:\n  type: pq\n", {}, "index.type: must be one of auto, flat, hnsw, hnsw_sq, ivf"),
        ("index:\n  merge_memory_mb: 64\n", {}, "index.merge_memory_mb: must be at least 128, got 64"),
        ("index: 3\n", {}, "index in ./config.yaml: expected a mapping of index settings, got integer"),
        ("- a list\n", {}, "expected a mapping of settings"),
        ("a: [unclosed\n", {}, "not valid YAML"),
        ("", {"RETRIEVE_BATCH_SIZE": "x"}, "encoder.batch_size in env RETRIEVE_BATCH_SIZE: expected an integer"),
        ("", {"RETRIEVE_NOPE": "1"}, "unknown setting in environment variable RETRIEVE_NOPE"),
        ("search:\n  k: 0\n", {}, "search.k: must be at least 1"),
    ],
)
def test_bad_settings_are_clear_errors(tmp_path: Path, content: str, env: dict[str, str], message: str) -> None:
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(environ=env, cwd=tmp_path)
    assert message in str(info.value)


def test_env_values_are_typed(tmp_path: Path) -> None:
    s = load_settings(environ={"RETRIEVE_BATCH_SIZE": "16", "RETRIEVE_MIN_SCORE": "0.25", "RETRIEVE_PROGRESS": "false"}, cwd=tmp_path)
    assert (s.encoder.batch_size, s.search.min_score, s.ingest.progress) == (16, 0.25, False)


def test_the_shipped_config_yaml_lists_every_setting_with_its_default() -> None:
    import yaml

    shipped = REPO / "config.yaml"
    values = yaml.safe_load(shipped.read_text())
    assert values == Settings().as_nested()


def test_retrieve_config_command_shows_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("search:\n  k: 4\n")
    monkeypatch.setenv("RETRIEVE_BATCH_SIZE", "32")
    result = CliRunner().invoke(cli, ["--model", "m", "config", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["search.k"] == {"value": 4, "source": "./config.yaml"}
    assert data["encoder.batch_size"] == {"value": 32, "source": "env RETRIEVE_BATCH_SIZE"}
    assert data["encoder.model"] == {"value": "m", "source": "flag --model"}
    assert data["index.type"]["source"] == "default"
    human = CliRunner().invoke(cli, ["config"])
    assert "(./config.yaml)" in human.output
    bad = CliRunner().invoke(cli, ["--config", str(tmp_path / "missing.yaml"), "config"])
    assert bad.exit_code == 2 and "does not exist" in bad.output and "Traceback" not in bad.output
