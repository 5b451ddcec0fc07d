"""The suite's session-wide settings: environment isolation, markers, and the constants
tests share (``REPO``, ``SHARED_DATA``, ``REAL``, ``HASH``, ``SEED``). The fixtures live in
``tests/fixtures/``, one module per concern, loaded here as plugins:

* ``databases``: ``db_backend`` (with the ``both_databases`` parametrisation),
  ``postgres_admin_url``, ``new_postgres_database``, ``database_url``, and the helpers
  ``admin_connect`` and ``execute_sql``;
* ``encoders``: ``encoder`` (the real packaged model), ``torch_encoder``, ``hash_encoder``;
* ``stores``: ``make_retriever``, ``store_env``, ``real_store_env``, and ``write_jsonl``;
* ``ray``: ``ray_cluster``, one local Ray cluster for the session;
* ``server``: ``ServeProcess`` (`retrieve serve` as a subprocess) and ``free_port``.

Tests import the constants from here (``from tests.conftest import HASH``) and a helper
from the module that defines it (``from tests.fixtures.stores import write_jsonl``).

Two encoders serve the suite: ``hash-384``, the deterministic test encoder that ships in
the package, wherever the model's meaning does not matter (``make_retriever`` and
``store_env`` use it), and the real all-MiniLM-L6-v2 wherever it does (the ``encoder``
fixture, ``make_retriever(model=REAL)`` and ``real_store_env``).

The whole session runs with bf16 hidden from the backend chooser
(``RETRIEVAL_HIDE_CPU_FEATURES=bf16``), so the default encoder is openvino fp32 on every
CPU and the expected scores hold everywhere; the tests of the bf16 path unset it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RETRIEVAL_HIDE_CPU_FEATURES"] = "bf16"

pytest_plugins = [
    "tests.fixtures.databases",
    "tests.fixtures.encoders",
    "tests.fixtures.stores",
    "tests.fixtures.ray",
    "tests.fixtures.server",
]

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL = "all-MiniLM-L6-v2"
HASH = "hash-384"
SEED = [
    "A comfortable and durable cotton t-shirt, perfect for everyday wear.",
    "High-performance running shoes with advanced cushioning for marathon runners.",
    "A stylish and lightweight laptop bag, designed to protect your electronics.",
    "Soft and breathable linen pants, ideal for warm weather and casual outings.",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run the test on SQLite and on PostgreSQL (db_backend)")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No RETRIEVE_* variable or ./config.yaml of the developer leaks into a test."""
    for key in list(os.environ):
        if key.startswith("RETRIEVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.setenv("RETRIEVAL_HIDE_CPU_FEATURES", "bf16")

