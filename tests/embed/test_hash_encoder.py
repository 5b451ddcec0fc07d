"""hash-N, the deterministic test encoder: unit vectors derived from the text, the same
in every process and on every machine, its own model key, and selectable like any model."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

from retrieval.embed import create_encoder, resolve_model
from retrieval.errors import RetrievalError

TEXTS = ["Waterproof hiking boots for rough mountain trails", "waterproof HIKING boots!", "A cast iron frying pan",
         "?", "the and of"]


def test_unit_float32_rows_of_the_named_dimension() -> None:
    for dim in (8, 64, 384, 1024):
        vectors = create_encoder(f"hash-{dim}", progress=False).encode(TEXTS)
        assert vectors.shape == (len(TEXTS), dim) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_scores_follow_shared_words() -> None:
    enc = create_encoder("hash-384", progress=False)
    boots, shouted, pan, question, stop = enc.encode(TEXTS)
    # Case and punctuation do not matter; word order neither; shared words raise the score.
    assert float(boots @ shouted) > 0.5 and float(shouted @ enc.encode(["boots hiking waterproof"])[0]) > 0.999
    assert abs(float(boots @ pan)) < 0.2
    assert float(enc.encode(TEXTS[:1])[0] @ boots) == pytest.approx(1.0)
    # A text with no word, or with function words only, still gets a vector of its own.
    assert abs(float(question @ stop)) < 0.5 and abs(float(question @ boots)) < 0.5


def test_the_same_vectors_in_another_process_and_after_pickling() -> None:
    enc = create_encoder("hash-384", progress=False)
    here = hashlib.sha256(enc.encode(TEXTS).tobytes()).hexdigest()
    code = ("import hashlib, sys, json\nfrom retrieval.embed import create_encoder\n"
            "texts = json.loads(sys.argv[1])\n"
            "print(hashlib.sha256(create_encoder('hash-384').encode(texts).tobytes()).hexdigest())\n")
    import json

    there = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], capture_output=True, text=True, timeout=60,
                           env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"})
    assert there.returncode == 0, there.stderr
    assert there.stdout.strip() == here  # no dependence on Python's hash seed or the process
    copy = pickle.loads(pickle.dumps(enc))
    assert hashlib.sha256(copy.encode(TEXTS).tobytes()).hexdigest() == here


def test_its_own_model_key_and_limits() -> None:
    info = resolve_model("hash-384")
    assert not info.is_language_model and info.path is None and info.dim == 384
    assert info.key.startswith("hash-384|384|") and info.key != resolve_model("hash-256").key
    assert resolve_model("HASH-384").key == info.key
    assert not info.key.startswith(resolve_model("all-MiniLM-L6-v2").key.split("|")[0])
    for bad in ("hash-4", "hash-5000"):
        with pytest.raises(RetrievalError, match="8 to 4096 dimensions"):
            resolve_model(bad)
    # Backend and precision settings do not apply to it: whatever is asked, hash runs.
    assert create_encoder("hash-384", backend="openvino", precision="bf16").backend == "hash"
