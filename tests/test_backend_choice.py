"""`backend: auto` / `precision: auto`: the fastest setting that passed the quality gate,
a fallback when a runtime or the CPU's bf16 is missing, and never an index made unusable.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import SEED
from retrieval.cli import cli
from retrieval.embed.onnx import AUTO_ORDER, GATE_FAILED, candidates
from retrieval.embed.openvino import cpu_has_bf16

DOCS = [{"id": str(i), "text": t} for i, t in enumerate(SEED)]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None


def _expected_auto() -> tuple[str, str]:
    if HAS_OPENVINO:
        return ("openvino", "bf16") if cpu_has_bf16() else ("openvino", "fp32")
    return ("onnx", "fp32") if importlib.util.find_spec("onnxruntime") else ("torch", "fp32")


def _hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))


def test_candidates_follow_the_measured_order_and_the_gate() -> None:
    auto = candidates("auto", "auto")
    assert auto == [pair for pair in AUTO_ORDER if pair not in GATE_FAILED]
    assert auto[0] == ("openvino", "bf16") and auto[-1] == ("torch", "fp32")
    assert ("onnx", "int8") not in auto  # failed the gate: only when asked for by name
    assert candidates("onnx", "auto") == [("onnx", "fp32"), ("torch", "fp32")]
    assert candidates("auto", "int8") == [("onnx", "int8"), ("torch", "fp32")]
    assert candidates("auto", "bf16") == [("openvino", "bf16"), ("torch", "fp32")]
    assert candidates("openvino", "fp32") == [("openvino", "fp32"), ("torch", "fp32")]
    assert candidates("auto", "auto", device="cuda") == [("torch", "fp32")]


def test_a_fresh_store_gets_the_fastest_gated_setting(make_retriever: Any, encoder: Any) -> None:
    r = make_retriever()
    st = r.status()
    assert (st["backend"], st["precision"]) == _expected_auto()
    assert st["backend_requested"] == "auto auto"
    assert st["backend_note"].startswith("auto: the fastest setting")
    r.ingest(DOCS)
    assert r.encoder is encoder  # the session's default encoder: one model load per process
    assert r.status()["index_model_key"] == encoder.model_key


def test_status_says_which_was_chosen(store_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("encoder"))
    backend, precision = _expected_auto()
    assert f"{backend} {precision} (auto: the fastest setting" in line


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_without_openvino_auto_falls_back_quietly(make_retriever: Any, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _hide(monkeypatch, "openvino")
    st = make_retriever().status()
    assert (st["backend"], st["precision"]) == ("onnx", "fp32")
    assert "openvino bf16 unavailable (openvino is not installed" in st["backend_note"]
    from retrieval.embed import create_encoder

    enc = create_encoder("all-MiniLM-L6-v2", threads=1, progress=False)
    assert enc.backend == "onnx" and enc.fallback is None  # auto asked for no runtime in particular
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "unavailable" in r.getMessage()]


def test_an_existing_index_keeps_a_matching_setting(make_retriever: Any, tmp_path: Path, torch_encoder: Any) -> None:
    """A store indexed with torch fp32 stays usable under `auto`: it picks the fastest
    runtime whose vectors share that key (openvino or onnx fp32), re-embedding nothing."""
    folder = tmp_path / "old"
    old = make_retriever(folder, backend="torch", precision="fp32")
    old.ingest(DOCS)
    assert old.encoder is torch_encoder

    r = make_retriever(folder)
    st = r.status()
    assert st["model_matches_index"] is True and st["precision"] == "fp32"
    if st["backend"] != "torch":
        assert "matches the index's vectors" in st["backend_note"] and "retrieve reindex" in st["backend_note"]
    assert r.encoder.model_key == torch_encoder.model_key
    hits = r.search("shoes for jogging", k=1)
    assert hits[0].id == "1"
    assert r.status()["stored_vectors"] == len(SEED)  # nothing embedded again


@pytest.mark.skipif(not (HAS_OPENVINO and cpu_has_bf16()), reason="needs openvino and a CPU with bf16")
def test_auto_follows_a_reindex_to_other_vectors(make_retriever: Any, tmp_path: Path) -> None:
    """A long-lived reader on `auto` keeps answering after another process moves the index
    to bf16 (say `retrieve --precision bf16 reindex`), instead of failing until restarted."""
    folder = tmp_path / "s"
    writer = make_retriever(folder, backend="torch", precision="fp32")
    writer.ingest(DOCS)
    reader = make_retriever(folder)
    assert reader.search("shoes for jogging", k=1)[0].id == "1"
    assert reader.encoder.precision == "fp32"

    upgrade = make_retriever(folder, precision="bf16")
    report = upgrade.reindex()
    assert report.embedded == len(SEED)  # bf16 vectors are new vectors
    assert reader.search("shoes for jogging", k=1)[0].id == "1"
    assert reader.encoder.model_key.endswith("|bf16")
    assert reader.status()["model_matches_index"] is True


def test_command_line_flags_choose_the_backend(store_env: dict[str, str]) -> None:
    runner = CliRunner()
    data = json.loads(runner.invoke(cli, ["--backend", "torch", "--precision", "fp32", "--threads", "1",
                                          "config", "--json"]).output)
    assert data["backend"] == {"value": "torch", "source": "flag --backend"}
    assert data["precision"] == {"value": "fp32", "source": "flag --precision"}
    assert data["threads"] == {"value": 1, "source": "flag --threads"}
    status = json.loads(runner.invoke(cli, ["--backend", "torch", "status", "--json"]).output)
    assert (status["backend"], status["precision"]) == ("torch", "fp32")
    bad = runner.invoke(cli, ["--backend", "tensorflow", "status"])
    assert bad.exit_code == 2 and "tensorflow" in bad.output
