"""`retrieve mcp` as an agent sees it: a real subprocess on a hash-384 SQLite store, spoken
to by the official MCP client over stdio and over streamable HTTP.

Each test drives one connection inside ``asyncio.run`` under a deadline, so a server that
stops answering fails the test instead of hanging it. The server's stderr goes to a log
file that a failure shows.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.conftest import HASH, SEED
from tests.fixtures.server import free_port
from tests.integrations.examples import docs_example, promised

mcp = pytest.importorskip("mcp", reason="the mcp extra is not installed (pip install -e '.[mcp]')")

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

T = TypeVar("T")
DEADLINE_S = 120  # a generous bound on one connection's whole conversation, never a timing check
READ_TOOLS = {"search", "similar", "get", "status"}
WRITE_TOOLS = {"ingest", "delete"}
DOCS = [{"id": f"p{i}", "text": text, "metadata": {"price": 10 * (i + 1), "category": "clothing" if i in (0, 3) else "gear"}}
        for i, text in enumerate(SEED)]


def _seed(folder: Path) -> dict[str, str]:
    """A store in ``folder`` holding :data:`DOCS`, and the environment that points a
    `retrieve` subprocess at it."""
    from retrieval.config import load_settings
    from retrieval.retriever import Retriever

    folder.mkdir(parents=True, exist_ok=True)
    values = {"database_url": f"sqlite:///{folder / 'retrieval.db'}", "index_dir": str(folder / "index"),
              "progress": False, "model": HASH}
    with Retriever.from_settings(load_settings(overrides=values, environ={}, cwd=folder)) as r:
        r.ingest(DOCS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", RETRIEVE_PROGRESS="false", RETRIEVE_MODEL=HASH,
               RETRIEVE_DATABASE_URL=values["database_url"], RETRIEVE_INDEX_DIR=values["index_dir"])
    return env


@pytest.fixture
def store(tmp_path: Path) -> dict[str, str]:
    return _seed(tmp_path / "store")


def _run(folder: Path, conversation: Callable[[], Awaitable[T]]) -> T:
    """Run one async conversation under the deadline; on failure, show the server's log."""
    async def bounded() -> T:
        return await asyncio.wait_for(conversation(), DEADLINE_S)

    try:
        return asyncio.run(bounded())
    except BaseException:
        log = folder / "server.log"
        if log.exists():
            print(f"--- server stderr ---\n{log.read_text(errors='replace')[-5000:]}", file=sys.stderr)
        raise


@asynccontextmanager
async def _stdio(env: dict[str, str], folder: Path, *args: str) -> AsyncIterator[Client]:
    """A client of `retrieve mcp ARGS` started over stdio, as Claude Desktop starts it."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "retrieval.cli", "mcp", *args], env=env,
                                   cwd=str(folder))
    with open(folder / "server.log", "a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=DEADLINE_S) as client:
            yield client


def _data(result: Any) -> Any:
    """A successful call's JSON (its structured content, which the text content repeats)."""
    assert not result.is_error, result.content
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def _error(result: Any) -> str:
    assert result.is_error, result
    (content,) = result.content
    return str(content.text)


# -- stdio ------------------------------------------------------------------------------


def test_read_only_server_lists_the_read_tools_with_their_schemas(store: dict[str, str], tmp_path: Path) -> None:
    async def talk() -> dict[str, Any]:
        async with _stdio(store, tmp_path) as client:
            return {tool.name: tool for tool in (await client.list_tools()).tools}

    tools = _run(tmp_path, talk)
    assert set(tools) == READ_TOOLS
    expected = {"search": ({"query"}, {"query", "k", "mode", "where"}), "similar": ({"id"}, {"id", "k", "where"}),
                "get": ({"id"}, {"id"}), "status": (set(), set())}
    for name, (required, properties) in expected.items():
        schema = tools[name].input_schema
        assert schema["type"] == "object"
        assert set(schema.get("properties", {})) == properties, name
        assert set(schema.get("required", [])) == required, name
        assert tools[name].description and tools[name].annotations.read_only_hint is True, name
    search = tools["search"].input_schema["properties"]
    assert search["k"]["type"] == "integer" and search["k"]["default"] == 5
    assert search["mode"]["enum"] == ["dense", "keyword", "hybrid"] and search["mode"]["default"] == "dense"
    assert "$lt" in search["where"]["description"]


def test_the_read_tools_answer_from_the_store(store: dict[str, str], tmp_path: Path) -> None:
    async def talk() -> dict[str, Any]:
        async with _stdio(store, tmp_path) as client:
            query = "running shoes with cushioning for marathon runners"
            return {
                "dense": _data(await client.call_tool("search", {"query": query, "k": 2})),
                "keyword": _data(await client.call_tool("search", {"query": "linen pants", "mode": "keyword"})),
                "hybrid": _data(await client.call_tool("search", {"query": query, "k": 3, "mode": "hybrid"})),
                "filtered": _data(await client.call_tool("search", {"query": query, "where": {"category": "clothing"}})),
                "get": _data(await client.call_tool("get", {"id": "p2"})),
                "similar": _data(await client.call_tool("similar", {"id": "p1", "k": 10})),
                "status": _data(await client.call_tool("status", {})),
            }

    out = _run(tmp_path, talk)
    dense = out["dense"]["results"]
    assert len(dense) == 2 and dense[0]["id"] == "p1" and dense[0]["text"] == SEED[1]
    assert dense[0]["metadata"] == {"price": 20, "category": "gear"} and dense[0]["score"] > dense[1]["score"]
    keyword = out["keyword"]["results"]
    assert keyword[0]["id"] == "p3" and keyword[0]["mode"] == "keyword" and "snippet" in keyword[0]
    assert out["hybrid"]["results"][0]["id"] == "p1" and out["hybrid"]["results"][0]["mode"] == "hybrid"
    assert {hit["id"] for hit in out["filtered"]["results"]} == {"p0", "p3"}
    assert out["get"] == {"id": "p2", "text": SEED[2], "metadata": {"price": 30, "category": "gear"}}
    similar = [hit["id"] for hit in out["similar"]["results"]]
    assert sorted(similar) == ["p0", "p2", "p3"]  # every other document, p1 itself left out
    assert out["status"]["documents"] == len(DOCS) and out["status"]["model"] == HASH


def test_a_bad_argument_is_a_tool_error_with_the_library_message_and_the_server_goes_on(
        store: dict[str, str], tmp_path: Path) -> None:
    async def talk() -> list[Any]:
        async with _stdio(store, tmp_path) as client:
            return [
                await client.call_tool("search", {"query": "shoes", "k": 0}),
                await client.call_tool("search", {"query": "shoes", "where": {"price": {"$bogus": 1}}}),
                await client.call_tool("search", {"query": "   "}),
                await client.call_tool("get", {"id": "nope"}),
                await client.call_tool("similar", {"id": "nope"}),
                await client.call_tool("search", {"query": "shoes", "mode": "fuzzy"}),  # refused by the schema
                await client.call_tool("search", {"query": "shoes", "k": 1}),
            ]

    bad_k, bad_filter, empty, missing, missing_similar, bad_mode, fine = _run(tmp_path, talk)
    # The SDK leads every tool error with "Error executing tool NAME: "; the library's line follows whole.
    assert _error(bad_k) == "Error executing tool search: k must be between 1 and 1000 (max_k), got 0"
    assert _error(bad_filter).startswith("Error executing tool search: price.$bogus: unknown operator")
    assert _error(empty).startswith("Error executing tool search: ") and "the query is empty" in _error(empty)
    assert _error(missing) == "Error executing tool get: no document with id 'nope'"
    assert _error(missing_similar) == "Error executing tool similar: no document with id 'nope'"
    for result in (bad_k, bad_filter, empty, missing, missing_similar):
        assert "Traceback" not in _error(result) and "\n" not in _error(result)
    assert "mode" in _error(bad_mode) and "Traceback" not in _error(bad_mode)  # pydantic's own lines
    assert _data(fine)["results"][0]["id"] == "p1"


def test_without_allow_writes_there_is_no_write_tool_to_call(store: dict[str, str], tmp_path: Path) -> None:
    async def talk() -> tuple[Any, Any, Any]:
        async with _stdio(store, tmp_path) as client:
            ingest = await client.call_tool("ingest", {"documents": [{"id": "x", "text": "a new document"}]})
            delete = await client.call_tool("delete", {"ids": ["p1"]})
            return ingest, delete, await client.call_tool("status", {})

    ingest, delete, status = _run(tmp_path, talk)
    assert "ingest" in _error(ingest) and "delete" in _error(delete)
    assert _data(status)["documents"] == len(DOCS)


def test_with_allow_writes_ingest_and_delete_change_what_search_finds(store: dict[str, str], tmp_path: Path) -> None:
    new = {"id": "new-1", "text": "Waterproof hiking boots with a rugged sole", "metadata": {"price": 120}}

    async def talk() -> dict[str, Any]:
        async with _stdio(store, tmp_path, "--allow-writes") as client:
            names = {tool.name for tool in (await client.list_tools()).tools}
            ingested = _data(await client.call_tool("ingest", {"documents": [new]}))
            found = _data(await client.call_tool("search", {"query": "waterproof hiking boots", "k": 1}))
            invalid = await client.call_tool("ingest", {"documents": [{"id": "bad", "text": "  "}]})
            no_text = await client.call_tool("ingest", {"documents": [{"id": "bad"}]})  # refused by the schema
            deleted = _data(await client.call_tool("delete", {"ids": ["new-1", "never-was"]}))
            after = _data(await client.call_tool("search", {"query": "waterproof hiking boots", "k": 10}))
            gone = await client.call_tool("get", {"id": "new-1"})
            return {"names": names, "ingested": ingested, "found": found, "invalid": invalid, "no_text": no_text,
                    "deleted": deleted, "after": after, "gone": gone}

    out = _run(tmp_path, talk)
    assert out["names"] == READ_TOOLS | WRITE_TOOLS
    # Published in the background: a version only once it holds the write, and found at once.
    assert out["ingested"]["added"] == 1 and "index_version" in out["ingested"]
    assert out["found"]["results"][0]["id"] == "new-1" and out["found"]["results"][0]["metadata"] == {"price": 120}
    message = _error(out["invalid"])
    assert message.startswith("Error executing tool ingest: documents[0]") and "nothing was written" in message and "--skip-invalid" not in message
    assert "text" in _error(out["no_text"])
    assert out["deleted"] == {"deleted": 1, "missing": ["never-was"]}
    assert "new-1" not in {hit["id"] for hit in out["after"]["results"]}
    assert _error(out["gone"]) == "Error executing tool get: no document with id 'new-1'"


def test_stdout_carries_only_the_protocol(store: dict[str, str], tmp_path: Path) -> None:
    """Even with -v (every log record on stderr), each line on stdout is a JSON-RPC message."""
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}}
    initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "search", "arguments": {"query": "shoes"}}}
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "-v", "mcp"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=store, cwd=tmp_path)
    try:
        # stdin stays open until the answer is in (communicate closes it): at end of input the
        # server stops, calls in flight included.
        proc.stdin.write("".join(json.dumps(m) + "\n" for m in (initialize, initialized, call)))
        proc.stdin.flush()
        messages = [json.loads(_read_line(proc)), json.loads(_read_line(proc))]
        rest, errors = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, errors
    assert rest == "" and [m.get("id") for m in messages] == [1, 2], messages
    assert "INFO" in errors  # -v did log, to stderr
    assert messages[0]["result"]["serverInfo"]["name"] == "retrieval"
    assert messages[1]["result"]["structuredContent"]["results"][0]["id"] == "p1"


def _read_line(proc: subprocess.Popen[str]) -> str:
    """The next line of the subprocess's stdout, within the deadline."""
    import selectors

    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        assert sel.select(DEADLINE_S), "no answer on stdout"
    return proc.stdout.readline()


# -- streamable HTTP ----------------------------------------------------------------------


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    import socket

    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"retrieve mcp exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"retrieve mcp did not listen on {port}:\n{log.read_text(errors='replace')}")


def test_streamable_http_transport_serves_the_tools(store: dict[str, str], tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "retrieval.cli", "mcp", "--transport", "http", "--port", str(port)],
                                env=store, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_listening(proc, port, log)

        async def talk() -> tuple[set[str], Any]:
            async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp"),
                              read_timeout_seconds=DEADLINE_S) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                return names, await client.call_tool("search", {"query": "lightweight laptop bag", "k": 1})

        names, result = _run(tmp_path, talk)
        assert names == READ_TOOLS
        assert _data(result)["results"][0]["id"] == "p2"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
    assert f"http://127.0.0.1:{port}/mcp" in log.read_text(errors="replace")


def _retrieve(env: dict[str, str], cwd: Path, *args: str, code: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "retrieval.cli", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          timeout=DEADLINE_S)


def test_http_on_a_public_address_is_refused(store: dict[str, str], tmp_path: Path) -> None:
    for host in ("0.0.0.0", "example.com"):
        proc = _retrieve(store, tmp_path, "mcp", "--transport", "http", "--host", host)
        assert proc.returncode != 0
        assert proc.stdout == ""
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"Error: refusing to listen on {host}") and "no authentication" in line


def test_host_and_port_need_the_http_transport(store: dict[str, str], tmp_path: Path) -> None:
    proc = _retrieve(store, tmp_path, "mcp", "--port", "9000")
    assert proc.returncode == 2 and "--host and --port apply to --transport http only" in proc.stderr


# -- the CLI without the SDK --------------------------------------------------------------


def test_other_commands_do_not_import_the_sdk(store: dict[str, str], tmp_path: Path) -> None:
    code = ("import sys\nfrom retrieval.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('mcp' in sys.modules, file=sys.stderr)\n")
    for args in (["--help"], ["search", "running shoes", "-k", "1", "--json"]):
        proc = _retrieve(store, tmp_path, *args, code=code)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "False", args
    assert json.loads(proc.stdout)["results"][0]["id"] == "p1"


def test_without_the_sdk_the_command_says_which_extra_to_install(store: dict[str, str], tmp_path: Path) -> None:
    code = "import sys\nsys.modules['mcp'] = None  # as if not installed\nfrom retrieval.cli import main\nmain()\n"
    proc = _retrieve(store, tmp_path, "mcp", code=code)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip() == "Error: retrieve mcp needs the mcp extra: pip install 'retrieval[mcp]'"


def test_the_pages_client_example_runs_and_prints_what_it_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """docs/mcp.md's client example, run as a reader would: in a folder where `retrieve
    init` and `retrieve ingest --sample` ran (its config.yaml names the test encoder, which
    the server reads from the folder, as the SDK passes it only a minimal environment)."""
    code = docs_example("mcp.md", "stdio_client")
    assert 'StdioServerParameters(command="retrieve", args=["mcp"])' in code
    (tmp_path / "config.yaml").write_text(f"encoder:\n  model: {HASH}\n")
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETRIEVE_")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    for args in (["init"], ["ingest", "--sample"]):
        subprocess.run([sys.executable, "-m", "retrieval.cli", *args], cwd=tmp_path, env=env, check=True,
                       capture_output=True, timeout=DEADLINE_S)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", env["PATH"])  # the example starts `retrieve` from the PATH, as a reader's shell has it
    for name in [k for k in os.environ if k.startswith("RETRIEVE_")]:
        monkeypatch.delenv(name)
    exec(compile(code, "docs/mcp.md", "exec"), {"__name__": "docs_example"})
    printed = capsys.readouterr().out.splitlines()
    assert printed == promised(code)
