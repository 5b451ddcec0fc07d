"""ONNX Runtime / OpenVINO encoders: export, agreement with torch, pooling, padding,
threads, model keys, the `retrieve model` commands, and the fallback to torch.

The model is exported once per session into the tests' XDG cache (the conftest points
XDG_CACHE_HOME at one folder for the whole session).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import SEED, SHARED_DATA
from tests.fixtures.stores import write_jsonl

pytest.importorskip("onnxruntime")

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The same folder the autouse fixture sets XDG_CACHE_HOME to for every test.
    return tmp_path_factory.getbasetemp() / "xdg-cache"


@pytest.fixture(scope="module")
def encoder(torch_encoder: Any) -> Any:
    """This module compares every backend with the torch fp32 reference."""
    return torch_encoder


@pytest.fixture(scope="module")
def exported(cache_home: Path, encoder: Any) -> Path:
    """Export fp32 and int8 once for this module."""
    from retrieval.embed.export import ensure_export

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(cache_home)
    try:
        return ensure_export(encoder.info, "int8")
    finally:
        if old is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture
def onnx_fp32(exported: Path) -> Any:
    from retrieval.embed import create_encoder

    return create_encoder(MODEL, backend="onnx", precision="fp32", progress=False)


def _cranfield_texts(n: int) -> list[str]:
    rows = []
    with open(SHARED_DATA / "cranfield" / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            rows.append((doc.get("title", "") + " " + doc["text"]).strip())
            if len(rows) == n:
                break
    return rows


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


# -- export and agreement -----------------------------------------------------------------


def test_export_is_cached_under_the_weights_digest(exported: Path, encoder: Any, cache_home: Path) -> None:
    from retrieval.embed.export import read_meta

    assert exported == cache_home / "retrieval" / "onnx" / encoder.info.digest
    assert (exported / "model.onnx").is_file() and (exported / "model.int8.onnx").is_file()
    meta = read_meta(exported)
    assert meta is not None and meta["model_key"] == encoder.model_key
    assert meta["agreement"]["onnx-fp32"] >= 0.9999
    # No temporary folders or files left behind.
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]


def test_fp32_embeddings_match_torch(onnx_fp32: Any, encoder: Any) -> None:
    texts = _cranfield_texts(16) + SEED + ["", "?", "x" * 3000, "Zürich café 東京"]
    ours = onnx_fp32.encode(texts, progress=False)
    ref = encoder.encode(texts, progress=False)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _cos(ours, ref).min() >= 0.9999
    # Queries go through the same path.
    assert _cos(onnx_fp32.encode_queries(["refund policy"]), encoder.encode_queries(["refund policy"]))[0] >= 0.9999


def test_long_text_is_truncated_and_padding_is_masked(onnx_fp32: Any, encoder: Any) -> None:
    long_text = "boundary layer transition on a swept wing " * 200
    short = "wing"
    assert onnx_fp32.token_counts([long_text, short]).tolist() == [256, 3]
    assert encoder.token_counts([long_text]).tolist() == [256]
    together = onnx_fp32.encode([short, long_text], progress=False)
    alone = onnx_fp32.encode([short], progress=False)
    # The short text is padded to 256 tokens in the batch: padding must not change it.
    assert _cos(together[:1], alone)[0] > 0.99999
    # Text beyond the limit is ignored, as in torch.
    longer = onnx_fp32.encode([long_text + " completely different words about cooking"], progress=False)
    assert _cos(together[1:], longer)[0] > 0.99999
    assert _cos(together[1:], encoder.encode([long_text], progress=False))[0] >= 0.9999


def test_batching_order_does_not_change_vectors(onnx_fp32: Any) -> None:
    texts = _cranfield_texts(12)
    onnx_fp32.batch_size = 3
    try:
        small_batches = onnx_fp32.encode(texts, progress=False)
    finally:
        onnx_fp32.batch_size = 64
    assert _cos(small_batches, onnx_fp32.encode(texts, progress=False)).min() > 0.99999


# -- pooling ------------------------------------------------------------------------------


def test_pooling_modes() -> None:
    from retrieval.embed.layout import pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]])
    np.testing.assert_allclose(pool(hidden, mask, ["cls_token"]), hidden[:, 0])
    np.testing.assert_allclose(pool(hidden, mask, ["mean_tokens"])[1], hidden[1, :2].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pool(hidden, mask, ["max_tokens"])[1], hidden[1, :2].max(axis=0))
    np.testing.assert_allclose(pool(hidden, mask, ["mean_sqrt_len_tokens"])[1], hidden[1, :2].sum(axis=0) / np.sqrt(2),
                               rtol=1e-6)
    both = pool(hidden, mask, ["cls_token", "mean_tokens"])
    assert both.shape == (2, 6)


def _model_copy(tmp_path: Path, encoder: Any, pooling: dict[str, Any] | None = None,
                extra_module: str | None = None) -> Path:
    """A copy of the packaged model's configuration (weights linked, not copied)."""
    src = Path(encoder.info.path)
    dst = tmp_path / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model.safetensors"))
    os.symlink(src / "model.safetensors", dst / "model.safetensors")
    if pooling is not None:
        cfg = json.loads((dst / "1_Pooling" / "config.json").read_text())
        cfg.update(pooling)
        (dst / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    if extra_module is not None:
        modules = json.loads((dst / "modules.json").read_text())
        modules.append({"idx": 3, "name": "3", "path": "3_X", "type": extra_module})
        (dst / "modules.json").write_text(json.dumps(modules))
    return dst


def test_layout_reads_the_pooling_configuration(tmp_path: Path, encoder: Any) -> None:
    from retrieval.embed.layout import ModelLayout

    layout = ModelLayout.read(encoder.info.path)
    assert (layout.pooling, layout.max_seq_length, layout.dim) == (("mean_tokens",), 256, 384)
    root = _model_copy(tmp_path, encoder, {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True,
                                           "pooling_mode_max_tokens": True})
    layout = ModelLayout.read(root)
    assert layout.pooling == ("cls_token", "max_tokens") and layout.dim == 768


# -- threads ------------------------------------------------------------------------------


def test_threads_setting_is_honoured_and_capped(exported: Path) -> None:
    from retrieval.embed import create_encoder
    from retrieval.embed.cpu import physical_cores, resolve_threads, usable_cpus

    one = create_encoder(MODEL, backend="onnx", threads=1, progress=False)
    one.load()
    assert one.threads == 1
    assert one.session.get_session_options().intra_op_num_threads == 1
    assert resolve_threads(None) == physical_cores() <= usable_cpus()
    assert resolve_threads(10_000) == usable_cpus()


# -- model keys ---------------------------------------------------------------------------


def test_model_keys(exported: Path, encoder: Any) -> None:
    from retrieval.embed import create_encoder
    from retrieval.embed.choice import runtime_key

    assert create_encoder(MODEL, backend="onnx", progress=False).model_key == encoder.model_key
    int8 = create_encoder(MODEL, backend="onnx", precision="int8", progress=False)
    assert int8.model_key == encoder.model_key + "|int8"
    assert int8.encode(["running shoes"], progress=False).shape == (1, 384)
    assert runtime_key(encoder.info, "openvino", "bf16") == encoder.model_key + "|bf16"
    # OpenVINO fp32 keeps torch's key only while it agrees with torch.
    assert runtime_key(encoder.info, "openvino", "fp32", {"openvino-fp32": 0.99999}) == encoder.model_key
    assert runtime_key(encoder.info, "openvino", "fp32", {"openvino-fp32": 0.999}) != encoder.model_key


def test_openvino_bf16(exported: Path, encoder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("openvino")
    from retrieval.embed import cpu, create_encoder

    monkeypatch.delenv(cpu.HIDE_ENV)  # the session hides bf16; this test runs it where the CPU has it
    if not cpu.has_bf16():
        pytest.skip("no native bfloat16 on this CPU")
    enc = create_encoder(MODEL, backend="openvino", precision="bf16", progress=False)
    assert type(enc).__name__ == "OpenVINOEncoder" and enc.model_key.endswith("|bf16")
    texts = _cranfield_texts(10)
    assert _cos(enc.encode(texts, progress=False), encoder.encode(texts, progress=False)).min() > 0.99


def test_index_never_mixes_keys(exported: Path, make_retriever: Any) -> None:
    from retrieval.errors import ModelMismatchError

    r = make_retriever(model=MODEL, backend="onnx")
    r.ingest([{"id": str(i), "text": t} for i, t in enumerate(SEED)])
    assert r.search("shoes for jogging", k=1)[0].id == "1"
    assert r.status()["backend"] == "onnx"
    r8 = make_retriever(model=MODEL, backend="onnx", precision="int8")
    with pytest.raises(ModelMismatchError):
        r8.search("shoes for jogging", k=1)


# -- torch stays out ----------------------------------------------------------------------


def test_onnx_search_process_never_imports_torch(exported: Path, tmp_path: Path, cache_home: Path) -> None:
    data = write_jsonl(tmp_path / "docs.jsonl", [{"id": str(i), "text": t} for i, t in enumerate(SEED)])
    script = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from retrieval.cli import cli\n"
        f"r = CliRunner().invoke(cli, ['ingest', {str(data)!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "r = CliRunner().invoke(cli, ['search', 'shoes for jogging', '-k', '1', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(r.output.strip())\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update(XDG_CACHE_HOME=str(cache_home), HF_HUB_OFFLINE="1", RETRIEVE_BACKEND="onnx", RETRIEVE_PROGRESS="false",
               RETRIEVE_DATABASE_URL=f"sqlite:///{tmp_path / 'r.db'}", RETRIEVE_INDEX_DIR=str(tmp_path / "index"))
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result_line, modules_line = out.stdout.strip().splitlines()[-2:]
    assert json.loads(result_line)["results"][0]["id"] == "1"
    assert modules_line == "[]"


# -- CLI ----------------------------------------------------------------------------------


def test_model_export_and_list_commands(exported: Path, real_store_env: dict[str, str]) -> None:
    from retrieval.cli import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["model", "export", "--precision", "int8", "--json"])
    assert result.exit_code == 0, result.output
    meta = json.loads(result.output)
    assert meta["path"] == str(exported) and meta["agreement"]["onnx-fp32"] >= 0.9999
    assert "onnx-int8" in meta["agreement"]
    result = runner.invoke(cli, ["model", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    # (Other tests export other models into the same session cache.)
    mine = [r for r in rows if r["path"] == str(exported)]
    assert len(mine) == 1 and mine[0]["precisions"] == ["fp32", "int8"]
    text = runner.invoke(cli, ["model", "list"]).output
    assert "all-MiniLM-L6-v2" in text and "fp32, int8" in text


def test_model_list_with_an_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrieval.cli import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty"))
    result = CliRunner().invoke(cli, ["model", "list"])
    assert result.exit_code == 0 and "No exports" in result.output


# -- fallback -----------------------------------------------------------------------------


def test_fallback_to_torch_when_the_backend_cannot_be_built(
    exported: Path, tmp_path: Path, encoder: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import importlib.util

    from retrieval.embed import create_encoder
    from retrieval.embed.sentence_transformers import SentenceTransformerEncoder

    # A precision the backend does not run.
    enc = create_encoder(MODEL, backend="onnx", precision="bf16", progress=False)
    assert isinstance(enc, SentenceTransformerEncoder) and enc.model_key == encoder.model_key
    assert "bf16" in enc.fallback and "openvino" in enc.fallback
    # A model with a module the ONNX path cannot reproduce.
    odd = _model_copy(tmp_path, encoder, extra_module="sentence_transformers.models.Dense")
    enc = create_encoder(str(odd), backend="onnx", progress=False)
    assert isinstance(enc, SentenceTransformerEncoder) and "Dense" in enc.fallback
    # The runtime is not installed.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    enc = create_encoder(MODEL, backend="onnx", precision="int8", threads=1, progress=False)
    assert isinstance(enc, SentenceTransformerEncoder) and "onnxruntime is not installed" in enc.fallback
    assert any("using torch" in r.getMessage() for r in caplog.records)


def test_status_reports_the_fallback(make_retriever: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else real(name, *a))
    st = make_retriever(model=MODEL, backend="openvino", precision="bf16").status()
    assert (st["backend"], st["precision"]) == ("torch", "fp32")
    assert "openvino is not installed" in st["backend_note"]
