"""`backend: auto` / `precision: auto`: the fastest setting that passed the quality gate,
a fallback when a runtime or the CPU's bf16 is missing, and never an index made unusable.

Expectations come from what the running CPU supports, never from the machine a test was
written on. The session hides bf16 (``RETRIEVAL_HIDE_CPU_FEATURES=bf16``, see conftest),
so the no-bf16 path runs on every machine; the policy is also asked directly with and
without ``bf16`` among the CPU's features, so the bf16 branch runs everywhere too; and
where the CPU really has bf16, the tests that unset the switch run bf16 itself.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from retrieval.embed import cpu
from retrieval.embed.choice import AUTO_ORDER, GATE_FAILED, candidates, plan
from retrieval.embed.model import resolve_model
from tests.conftest import REAL, SEED

DOCS = [{"id": str(i), "text": t} for i, t in enumerate(SEED)]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
CPU_HAS_BF16 = "bf16" in cpu.detected()
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")


def _expected_auto() -> tuple[str, str]:
    """What auto should pick on this CPU as the tests see it (bf16 hidden or not)."""
    if HAS_OPENVINO:
        return ("openvino", "bf16") if cpu.has_bf16() else ("openvino", "fp32")
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


# -- the policy on both kinds of CPU, on any machine --------------------------------------


@needs_openvino
def test_auto_takes_bf16_exactly_when_the_cpu_has_it() -> None:
    info = resolve_model(REAL)
    with_bf16 = plan(info, "auto", "auto", features={"bf16", "avx512"})
    assert (with_bf16.backend, with_bf16.precision) == ("openvino", "bf16")
    assert with_bf16.model_key == info.key + "|bf16"
    assert with_bf16.note.startswith("auto: the fastest setting here") and not with_bf16.passed_over

    without = plan(info, "auto", "auto", features={"avx2"})
    assert (without.backend, without.precision) == ("openvino", "fp32")
    assert without.model_key == info.key  # fp32 vectors share torch's key
    assert without.passed_over == ("openvino bf16 unavailable (this CPU has no native bfloat16 (AVX512-BF16 or AMX))",)
    assert "openvino bf16 unavailable (this CPU has no native bfloat16" in without.note

    # bf16 asked for by name on a CPU without it: the fallback says why.
    named = plan(info, "openvino", "bf16", features=set())
    assert (named.backend, named.precision) == ("torch", "fp32") and "no native bfloat16" in named.note


@needs_openvino
def test_an_existing_fp32_index_keeps_fp32_on_either_cpu() -> None:
    """A store indexed with torch fp32 stays usable under `auto`: the fastest runtime whose
    vectors share that key wins (openvino fp32). Where bf16 would be faster, the note says
    so and how to move; where it is not available, fp32 is simply the fastest."""
    info = resolve_model(REAL)
    kept = plan(info, "auto", "auto", prefer_key=info.key, features={"bf16"})
    assert (kept.backend, kept.precision, kept.model_key) == ("openvino", "fp32", info.key)
    assert "matches the index's vectors" in kept.note and "retrieve reindex" in kept.note
    assert "openvino bf16 is faster here" in kept.note

    plain = plan(info, "auto", "auto", prefer_key=info.key, features=set())
    assert (plain.backend, plain.precision, plain.model_key) == ("openvino", "fp32", info.key)
    assert plain.note.startswith("auto: the fastest setting here") and "matches" not in plain.note

    # A bf16 index on a CPU without bf16: nothing produces its key, so the fastest runs
    # and the store reports the mismatch (see the status test below).
    orphan = plan(info, "auto", "auto", prefer_key=info.key + "|bf16", features=set())
    assert (orphan.backend, orphan.precision) == ("openvino", "fp32")


def test_hiding_cpu_features(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu.HIDE_ENV, "bf16")
    assert "bf16" not in cpu.features() and not cpu.has_bf16()
    assert cpu.features() == cpu.detected() - {"bf16"}
    monkeypatch.setenv(cpu.HIDE_ENV, "bf16, avx512")
    assert not cpu.features() & {"bf16", "avx512"}
    monkeypatch.delenv(cpu.HIDE_ENV)
    assert cpu.features() == cpu.detected()
    assert cpu.has_bf16() == CPU_HAS_BF16
    monkeypatch.setenv(cpu.HIDE_ENV, "bf17")
    from retrieval.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown CPU feature 'bf17'"):
        cpu.features()


@needs_openvino
def test_hidden_bf16_is_named_as_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    if not CPU_HAS_BF16:
        pytest.skip("this CPU has no bf16 to hide")
    chosen = plan(resolve_model(REAL), "auto", "auto")
    assert (chosen.backend, chosen.precision) == ("openvino", "fp32")
    assert "bf16 is hidden by RETRIEVAL_HIDE_CPU_FEATURES" in chosen.note


# -- the real encoder, as this CPU runs it ------------------------------------------------


def test_a_fresh_store_gets_the_fastest_gated_setting(make_retriever: Any, encoder: Any) -> None:
    r = make_retriever(model=REAL)
    st = r.status()
    assert (st["backend"], st["precision"]) == _expected_auto()
    assert st["backend_requested"] == "auto auto"
    assert st["backend_note"].startswith("auto: the fastest setting")
    r.ingest(DOCS)
    assert r.encoder is encoder  # the session's default encoder: one model load per process
    assert r.status()["index_model_key"] == encoder.model_key


def test_status_says_which_was_chosen(real_store_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("encoder"))
    backend, precision = _expected_auto()
    assert f"{backend} {precision} (auto: the fastest setting" in line


@pytest.mark.skipif(not HAS_OPENVINO, reason="openvino is not installed")
def test_without_openvino_auto_falls_back_quietly(make_retriever: Any, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    _hide(monkeypatch, "openvino")
    st = make_retriever(model=REAL).status()
    assert (st["backend"], st["precision"]) == ("onnx", "fp32")
    assert "openvino bf16 unavailable (openvino is not installed" in st["backend_note"]
    from retrieval.embed import create_encoder

    enc = create_encoder(REAL, threads=1, progress=False)
    assert enc.backend == "onnx" and enc.fallback is None  # auto asked for no runtime in particular
    assert not [r for r in caplog.records if r.levelname == "WARNING" and "unavailable" in r.getMessage()]


def test_an_existing_index_keeps_a_matching_setting(make_retriever: Any, tmp_path: Path, torch_encoder: Any,
                                                    encoder: Any) -> None:
    """A store indexed with torch fp32 runs on a runtime whose vectors share that key,
    re-embedding nothing; status explains the choice as this CPU's policy says."""
    folder = tmp_path / "old"
    old = make_retriever(folder, model=REAL, backend="torch", precision="fp32")
    old.ingest(DOCS)
    assert old.encoder is torch_encoder

    r = make_retriever(folder, model=REAL)
    st = r.status()
    assert st["model_matches_index"] is True and st["precision"] == "fp32"
    expected = plan(resolve_model(REAL), "auto", "auto", prefer_key=torch_encoder.model_key)
    assert (st["backend"], st["backend_note"]) == (expected.backend, expected.note)
    if cpu.has_bf16():
        assert "matches the index's vectors" in st["backend_note"] and "retrieve reindex" in st["backend_note"]
    elif st["backend"] != "torch":
        assert st["backend_note"].startswith("auto: the fastest setting")
    assert r.encoder.model_key == torch_encoder.model_key
    hits = r.search("shoes for jogging", k=1)
    assert hits[0].id == "1"
    assert r.status()["stored_vectors"] == len(SEED)  # nothing embedded again


@pytest.mark.skipif(not (HAS_OPENVINO and CPU_HAS_BF16), reason="needs openvino and a CPU with bf16")
def test_auto_follows_a_reindex_to_other_vectors(make_retriever: Any, tmp_path: Path, encoder: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-lived reader on `auto` keeps answering after another process moves the index
    to bf16 (say `retrieve --precision bf16 reindex`), instead of failing until restarted."""
    monkeypatch.delenv(cpu.HIDE_ENV)  # this CPU's bf16, for real
    folder = tmp_path / "s"
    writer = make_retriever(folder, model=REAL, backend="torch", precision="fp32")
    writer.ingest(DOCS)
    reader = make_retriever(folder, model=REAL)
    assert reader.search("shoes for jogging", k=1)[0].id == "1"
    assert reader.encoder.precision == "fp32"

    upgrade = make_retriever(folder, model=REAL, precision="bf16")
    report = upgrade.reindex()
    assert report.embedded == len(SEED)  # bf16 vectors are new vectors
    assert reader.search("shoes for jogging", k=1)[0].id == "1"
    assert reader.encoder.model_key.endswith("|bf16")
    assert reader.status()["model_matches_index"] is True


@pytest.mark.skipif(not (HAS_OPENVINO and CPU_HAS_BF16), reason="needs openvino and a CPU with bf16")
def test_unmasked_auto_runs_bf16_where_the_cpu_has_it(make_retriever: Any, monkeypatch: pytest.MonkeyPatch,
                                                      encoder: Any) -> None:
    monkeypatch.delenv(cpu.HIDE_ENV)
    r = make_retriever(model=REAL)
    st = r.status()
    assert (st["backend"], st["precision"]) == ("openvino", "bf16")
    r.ingest(DOCS)
    assert r.encoder.model_key.endswith("|bf16") and r.encoder.precision == "bf16"
    hit = r.search("What are good shoes for jogging?", k=1)[0]
    assert hit.id == "1" and abs(hit.score - 0.6649) < 0.002


def test_command_line_flags_choose_the_backend(store_env: dict[str, str]) -> None:
    runner = CliRunner()
    data = json.loads(runner.invoke(cli, ["--backend", "torch", "--precision", "fp32", "--threads", "1",
                                          "config", "--json"]).output)
    assert data["encoder.backend"] == {"value": "torch", "source": "flag --backend"}
    assert data["encoder.precision"] == {"value": "fp32", "source": "flag --precision"}
    assert data["encoder.threads"] == {"value": 1, "source": "flag --threads"}
    status = json.loads(runner.invoke(cli, ["--model", REAL, "--backend", "torch", "status", "--json"]).output)
    assert (status["backend"], status["precision"]) == ("torch", "fp32")
    bad = runner.invoke(cli, ["--backend", "tensorflow", "status"])
    assert bad.exit_code == 2 and "tensorflow" in bad.output


def test_the_test_encoder_says_it_is_not_a_language_model(store_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["status"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("encoder"))
    assert "not a language model" in line and line.split()[1] == "hash"
    st = json.loads(CliRunner().invoke(cli, ["status", "--json"]).output)
    assert st["language_model"] is False and st["model_key"].startswith("hash-384|384|")
