"""The index is derived data: versioned, checked on load, rebuilt without re-embedding.

The stores use the test encoder (hash-384): these tests are about files and versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from retrieval.cli import cli
from tests.conftest import SEED


def _manifest(store: Path) -> dict[str, Any]:
    name = (store / "index" / "CURRENT").read_text().strip()
    return json.loads((store / "index" / "manifests" / name).read_text())


def _current_file(store: Path) -> Path:
    """The current generation's largest segment file."""
    seg = max(_manifest(store)["segments"], key=lambda s: s["rows"])
    return store / "index" / seg["faiss"]["path"]


@pytest.fixture
def seeded(make_retriever, hash_encoder: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    encoder = hash_encoder
    r = make_retriever()
    r.ingest([{"id": f"d{i}", "text": t} for i, t in enumerate(SEED)])
    calls: list[int] = []
    original = encoder.encode
    monkeypatch.setattr(encoder, "encode", lambda texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    return r, tmp_path / "store", calls


def _fresh(make_retriever, store: Path) -> Any:
    return make_retriever(store)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete_file", "delete_dir", "manifest", "delete_all"])
def test_damaged_index_is_rebuilt_from_stored_embeddings(seeded, make_retriever, damage: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
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
    elif damage == "manifest":
        name = (store / "index" / "CURRENT").read_text().strip()
        (store / "index" / "manifests" / name).write_text('{"generation": 1}')
    else:
        shutil.rmtree(store / "index")
    r = _fresh(make_retriever, store)
    hits = r.search("What are good running shoes for jogging?", k=1)
    assert hits[0].id == "d1"
    assert calls == [1]  # only the query was encoded: no document re-embedded
    # The library warns through logging (the CLI prints it as one line: see test_chaos).
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("rebuilding" in m or "building it from the stored embeddings" in m for m in warned), warned
    assert r.verify().ok
    assert r.status()["indexed"] == 4


def test_publishing_keeps_old_generations_loadable_and_collects_garbage(seeded) -> None:
    r, store, _ = seeded
    for i in range(4):
        r.ingest([{"id": f"extra{i}", "text": f"Extra product number {i}"}], wait=True)  # a generation each
    manifests = sorted(p.name for p in (store / "index" / "manifests").iterdir() if not p.name.startswith("."))
    assert len(manifests) == 2  # keep_index_versions
    current = (store / "index" / "CURRENT").read_text().strip()
    assert current == manifests[-1]
    manifest = _manifest(store)
    assert sum(s["rows"] - s["dead"] for s in manifest["segments"]) == 8
    assert manifest["dim"] == 384 and manifest["metric"] == "inner_product" and manifest["format"] == 2
    assert manifest["model_key"].startswith("hash-384|384|")
    assert manifest["index_type"] == "auto" and manifest["last_seq"] == r.status()["max_seq"]
    # Every file the kept manifests name is there with its size; nothing else is left.
    named = set()
    for name in manifests:
        m = json.loads((store / "index" / "manifests" / name).read_text())
        for seg in m["segments"]:
            for ref in (seg["faiss"], seg["ids"], seg["tombstones"]):
                if ref:
                    named.add(ref["path"])
                    assert (store / "index" / ref["path"]).stat().st_size == ref["bytes"]
    on_disk = {str(p.relative_to(store / "index")) for d in ("segments", "tombstones")
               for p in (store / "index" / d).glob("*") if (store / "index" / d).is_dir()}
    assert on_disk == named


def test_a_long_lived_reader_sees_new_versions(seeded, make_retriever) -> None:
    writer, store, _ = seeded
    reader = make_retriever(store)
    assert reader.search("frying pan", k=1)[0].id != "pan"
    writer.ingest([{"id": "pan", "text": "A cast iron frying pan"}])
    assert reader.search("frying pan", k=1)[0].id == "pan"


def test_model_mismatch_is_refused_and_reindex_model_switches(store_env, tmp_path: Path) -> None:
    """The store starts on hash-384; hash-256 is another model (another key, another
    dimension): searches and writes refuse it until `retrieve reindex --model`."""
    other = "hash-256"
    runner = CliRunner()
    data = tmp_path / "seed.jsonl"
    data.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(SEED)))
    assert runner.invoke(cli, ["ingest", str(data)]).exit_code == 0
    old_key = json.loads(runner.invoke(cli, ["status", "--json"]).output)["index_model_key"]

    refused = runner.invoke(cli, ["--model", other, "search", "shoes"])
    assert refused.exit_code == 1
    assert "retrieve reindex" in refused.output and "Traceback" not in refused.output
    refused_ingest = runner.invoke(cli, ["--model", other, "ingest", str(data)])
    assert refused_ingest.exit_code == 1 and "retrieve reindex" in refused_ingest.output

    switched = runner.invoke(cli, ["reindex", "--model", other])
    assert switched.exit_code == 0, switched.output
    assert "Reindexed 4 documents (4 embedded)" in switched.output
    assert f"model: {other}" in switched.output

    status = json.loads(runner.invoke(cli, ["--model", other, "status", "--json"]).output)
    assert status["index_model_key"] != old_key and status["index_model_key"].startswith("hash-256|256|")
    assert status["model_matches_index"] is True and status["stored_vectors"] == 8  # both models' vectors
    hits = json.loads(runner.invoke(cli, ["--model", other, "search", "--json", "-k", "4", "running shoes for jogging"]).output)
    assert len(hits["results"]) == 4 and hits["results"][0]["id"] == "d1"
    # The new model really is in use: the index holds its 256-dimensional vectors.
    manifest = _manifest(tmp_path / "store")
    assert manifest["dim"] == 256 and manifest["model_key"] == status["index_model_key"]
    assert "retrieve reindex" in runner.invoke(cli, ["search", "shoes"]).output
    # Switching back reuses the stored vectors of the first model: nothing is re-embedded.
    back = runner.invoke(cli, ["reindex"])
    assert "Reindexed 4 documents (0 embedded)" in back.output
    assert runner.invoke(cli, ["verify"]).exit_code == 0


def test_a_failed_index_write_keeps_the_previous_version(seeded, make_retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from retrieval.errors import IndexWriteError
    from retrieval.index import files

    r, store, _ = seeded
    before = (store / "index" / "CURRENT").read_text()
    real = files.write_durable
    calls = {"n": 0}

    def failing(path, data):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if path.name.endswith(".faiss"):
            real(path, data[: len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(files, "write_durable", failing)
    with pytest.raises(IndexWriteError) as info:  # publishing before returning: the error is the call's
        r.ingest([{"id": "new", "text": "A cast iron frying pan"}], wait=True)
    assert "No space left on device" in str(info.value) and "previous index generation keeps serving" in str(info.value)
    monkeypatch.setattr(files, "write_durable", real)
    assert (store / "index" / "CURRENT").read_text() == before
    assert not [p for p in (store / "index").rglob(".tmp-*")]
    # The document is stored (the database is the truth) and found; the next sync indexes it.
    reader = make_retriever(store)
    assert reader.search("frying pan", k=1)[0].id == "new"
    assert reader.sync().added == 1 and reader.verify().ok
