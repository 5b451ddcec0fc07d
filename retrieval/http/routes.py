"""The endpoints: each parses its request, calls the :class:`~retrieval.http.service.Service`
and answers."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and the request models are this application's (see schemas.make_schemas).

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from retrieval.http.schemas import (
    ERRORS,
    NOT_FOUND,
    OPENAI_ERRORS,
    DeleteResponse,
    DocumentOut,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Schemas,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from retrieval.http.service import Service

F = TypeVar("F", bound=Callable[..., Any])


def body_model(model: type[BaseModel]) -> Callable[[F], F]:
    """Have FastAPI parse an endpoint's ``body`` with ``model``: this application's
    subclass of the declared type, carrying the limits from its settings."""

    def apply(endpoint: F) -> F:
        endpoint.__annotations__["body"] = model
        return endpoint

    return apply


def add_routes(app: FastAPI, service: Service, schemas: Schemas, require_key: Any) -> None:
    protected = [Depends(require_key)]

    # Fields a mode does not have (ranks outside hybrid, snippets in dense mode) are left
    # out, not sent as null.
    @app.post("/v1/search", response_model=SearchResponse, response_model_exclude_none=True, dependencies=protected,
              responses=ERRORS, tags=["search"])
    @body_model(schemas.SearchRequest)
    async def search(body: SearchRequest) -> Any:
        """The ``k`` documents closest in meaning to ``query`` (or to the query ``vector``), best first."""
        return await service.search(body)

    @app.post("/v1/documents", response_model=UpsertResponse, dependencies=protected, responses=ERRORS,
              tags=["documents"])
    @body_model(schemas.UpsertRequest)
    async def upsert(body: UpsertRequest, wait: bool | None = None) -> Any:
        """Add or replace documents. When the response arrives they are committed to the
        database and every search finds them; the index version that holds them is
        published before the response with ``?wait=true`` (``index_version`` names it),
        else shortly after (``index_version`` null until then, ``published`` false)."""
        docs = [{"id": d.id, "text": d.text, "metadata": d.metadata,
                 **({"vector": d.vector} if d.vector is not None else {})} for d in body.documents]
        return await service.upsert(docs, wait)

    @app.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=protected, responses=OPENAI_ERRORS,
              tags=["embeddings"])
    @body_model(schemas.EmbeddingsRequest)
    async def embeddings(body: EmbeddingsRequest) -> Any:
        """OpenAI-compatible embeddings with the store's encoder: the vectors its documents
        get (L2-normalised, so a dot product is cosine similarity)."""
        return await service.embeddings(body)

    @app.get("/v1/documents/{doc_id:path}/similar", response_model=SearchResponse, response_model_exclude_none=True,
             dependencies=protected,
             responses=NOT_FOUND, tags=["search"])
    async def similar(doc_id: str, k: int | None = None, min_score: float | None = None,
                      where: str | None = None) -> Any:
        """The documents nearest to a stored document (more like this), from its stored
        vector, itself left out. ``where`` is a metadata filter as JSON."""
        return await service.similar(doc_id, k, min_score, where)

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentOut, dependencies=protected, responses=NOT_FOUND,
             tags=["documents"])
    async def get_document(doc_id: str) -> Any:
        """One document by its id."""
        return await service.get(doc_id)

    @app.delete("/v1/documents/{doc_id:path}", response_model=DeleteResponse, dependencies=protected,
                responses=NOT_FOUND, tags=["documents"])
    async def delete_document(doc_id: str, wait: bool | None = None) -> Any:
        """Delete a document; searches stop returning it when the response arrives (the
        index version without it is published then with ``?wait=true``, else shortly after)."""
        return await service.delete(doc_id, wait)

    @app.get("/v1/status", dependencies=protected, responses=ERRORS, tags=["service"])
    async def status() -> dict[str, Any]:
        """Documents, index version and size, pending changes, model, and the sync worker."""
        return await service.status()

    @app.get("/healthz", tags=["service"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["service"], responses={503: {"description": "Not ready yet (or any more)."}})
    async def readyz() -> JSONResponse:
        """Readiness: model and index loaded, database reachable; reports the sync lag."""
        ready, body = await service.readiness()
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", dependencies=protected, responses=ERRORS, tags=["service"], response_class=Response)
    async def prometheus() -> Response:
        """Prometheus text format: requests, latencies, documents, index size, sync lag."""
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(await service.metrics_text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())
