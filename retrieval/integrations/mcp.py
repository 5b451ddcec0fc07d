"""A Model Context Protocol server over a :class:`~retrieval.retriever.Retriever`, so that
agents (Claude Desktop, IDE assistants, any MCP client) search the store as a tool.

:func:`build_server` registers one tool per Retriever method an agent needs, with typed
parameters: the SDK derives each tool's JSON schema from the signature and its
description from the docstring, which is all the model sees of it, so the docstrings
are written for the model. Writes (``ingest``, ``delete``) exist only with
``allow_writes``: an agent cannot call a tool that is not listed, which is a stronger
guarantee than refusing the call.

The tools are plain functions: the SDK runs a synchronous tool in a worker thread, so the
blocking library calls never hold up the event loop (the Retriever is safe across threads;
the HTTP service calls it from a thread pool too). A
:class:`~retrieval.errors.RetrievalError` becomes a :class:`ToolError` with the library's
one-line message, which the client receives as a result with ``isError`` set and the
model can act on; any other exception is a bug, logged with its traceback on the server's
stderr, and the client gets only "Error executing tool NAME".

Needs the ``mcp`` extra (``pip install 'retrieval[mcp]'``, the SDK 2.x, where FastMCP is
named ``MCPServer``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field
from typing_extensions import TypedDict  # pydantic's schemas need it before Python 3.12

from retrieval.documents import finite
from retrieval.errors import InvalidInputError, RetrievalError

if TYPE_CHECKING:
    from retrieval.retriever import Retriever

__all__ = ["build_server"]

F = TypeVar("F", bound=Callable[..., Any])

INSTRUCTIONS = """\
Semantic search over a document store. `search` finds documents by meaning (mode dense),
by words (keyword) or both (hybrid); `similar` finds documents like a stored one; `get`
reads one document in full; `status` tells how many documents there are and which model
embeds them. Filters (`where`) select by metadata: {"category": "footwear",
"price": {"$lt": 100}}; operators $eq $ne $gt $gte $lt $lte $in $nin $exists, combined
with $and, $or, $not; a dotted path reaches into nested metadata."""

Mode = Literal["dense", "keyword", "hybrid"]

# The descriptions below reach the model through the JSON schema of each tool.
K = Annotated[int, Field(description="How many results to return (from 1 to the store's max_k, 1000 by default).")]
Where = Annotated[dict[str, Any] | None, Field(description=(
    'Metadata filter, e.g. {"category": "footwear", "price": {"$lt": 100}}; operators $eq $ne $gt $gte '
    "$lt $lte $in $nin $exists, combined with $and, $or (lists of filters) and $not (one filter)."))]
DocId = Annotated[str, Field(description="The document's id (as `search` returns it).")]


class DocumentInput(TypedDict):
    """One document to store: the fields files and the HTTP service take too."""

    id: Annotated[str, Field(description="Your id for the document; an existing one is replaced.")]
    text: Annotated[str, Field(description="The text that is embedded and searched.")]
    metadata: NotRequired[Annotated[dict[str, Any], Field(description="Any JSON object, for filters.")]]


# The SDK evaluates these annotations from the module's globals (the tools are closures), so
# they are named here, not built from the store's settings: max_batch is checked in the tool.
Documents = Annotated[list[DocumentInput], Field(description=(
    "The documents to store (at most the store's max_batch, 1000 by default); a document whose id exists is replaced."))]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)


def build_server(retriever: Retriever, *, allow_writes: bool = False, name: str = "retrieval") -> MCPServer[Any]:
    """An MCP server whose tools call ``retriever``; run it with ``.run("stdio")`` or
    ``.run("streamable-http", host=..., port=...)``. The caller owns ``retriever`` (and
    closes it after the server stops)."""
    server: MCPServer[Any] = MCPServer(name, instructions=INSTRUCTIONS, version=_version(), log_level="WARNING")

    @_tool(server, READ_ONLY)
    def search(query: Annotated[str, Field(description="What to look for, in natural language or keywords.")],
               k: K = 5, mode: Annotated[Mode, Field(description=(
                   "dense: by meaning (default); keyword: by the words (BM25); hybrid: both, fused."))] = "dense",
               where: Where = None) -> dict[str, Any]:
        """Search the documents for `query`; the best match first. Each result has the
        document's id, score, text and metadata (keyword and hybrid results add a snippet
        around the matched words)."""
        with _user_errors():
            hits = retriever.search(query, k, where=where, mode=mode)
        return _jsonable({"results": [hit.as_dict() for hit in hits]})

    @_tool(server, READ_ONLY)
    def similar(id: DocId, k: K = 5, where: Where = None) -> dict[str, Any]:
        """The documents most similar in meaning to the stored document `id`, itself left
        out: more like this one."""
        with _user_errors():
            hits = retriever.similar(id, k, where=where)
        return _jsonable({"results": [hit.as_dict() for hit in hits]})

    @_tool(server, READ_ONLY)
    def get(id: DocId) -> dict[str, Any]:
        """The stored document `id` in full: its text and metadata (search results carry the
        same; use this when you have an id only)."""
        with _user_errors():
            doc = retriever.get(id)
        return _jsonable(doc.as_dict())

    @_tool(server, READ_ONLY)
    def status() -> dict[str, Any]:
        """The store's state: how many documents, the embedding model, the index version,
        changes not yet indexed, sizes on disk."""
        with _user_errors():
            return _jsonable(retriever.status())

    if allow_writes:
        _register_writes(server, retriever)
    return server


def _register_writes(server: MCPServer[Any], retriever: Retriever) -> None:
    max_batch = retriever.settings.serve.max_batch

    @_tool(server, WRITE)
    def ingest(documents: Documents) -> dict[str, Any]:
        """Store documents (add new ids, replace existing ones), embed and index them; they
        are searchable when this returns (index_version: a published version that holds
        them, or null while they wait for the background publish). Nothing is written if
        any document is invalid."""
        if not 1 <= len(documents) <= max_batch:
            raise ToolError(f"documents: from 1 to {max_batch} documents (max_batch), not {len(documents)}")
        with _user_errors():
            # Embedding before the write transaction, as the HTTP service does: other
            # writers wait for the database only while the rows are stored.
            report = retriever.ingest([dict(d) for d in documents], embed_first=True, executor="local")
        return {"added": report.added, "updated": report.updated, "unchanged": report.unchanged,
                "index_version": retriever.version_holding(report)}

    @_tool(server, WRITE)
    def delete(ids: Annotated[list[str], Field(description="The ids of the documents to delete.")]) -> dict[str, Any]:
        """Delete documents by id; the result lists ids that did not exist. Deleted documents
        no longer appear in any search when this returns."""
        if not 1 <= len(ids) <= max_batch:
            raise ToolError(f"ids: from 1 to {max_batch} ids (max_batch), not {len(ids)}")
        with _user_errors():
            deleted, missing = retriever.delete(ids)
        return {"deleted": deleted, "missing": missing}


def _tool(server: MCPServer[Any], annotations: ToolAnnotations) -> Callable[[F], F]:
    """Register a tool, its docstring as the description in one paragraph (the SDK would
    send the source's indentation and line breaks along)."""
    def register(fn: F) -> F:
        server.add_tool(fn, description=" ".join((fn.__doc__ or "").split()), annotations=annotations)
        return fn

    return register


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("retrieval")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return ""


@contextmanager
def _user_errors() -> Iterator[None]:
    """A library error as the tool error the model reads: its one line, no traceback."""
    try:
        yield
    except InvalidInputError as exc:
        # The library's own message suggests a CLI flag; here the model must fix the documents.
        raise ToolError(str(InvalidInputError(exc.problems, exc.total, noun="documents", hint=""))) from None
    except RetrievalError as exc:
        raise ToolError(str(exc)) from None


def _jsonable(data: Any) -> Any:
    """``data`` as standard JSON values: a NaN or infinity (metadata a store took before they
    were refused) becomes null, and anything else JSON lacks (a path, a date) its string,
    as `retrieve ... --json` writes them."""
    return json.loads(json.dumps(finite(data), default=str, allow_nan=False))


