"""Errors as JSON: ``{"error": code, "message": ..., "request_id": ...}``, never a traceback.

Library errors carry their own HTTP status and code (:mod:`retrieval.errors`); one
handler maps them all. Validation errors name the field, and the setting that bounds it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from retrieval.errors import InvalidInputError, RetrievalError

log = logging.getLogger("retrieval.server")

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 503: "unavailable"}

# Which setting bounds a request field: named in 4xx answers so that users know what
# to change (or ask their operator to change).
LIMITS = {"k": "max_k", "query": "max_query_chars", "documents": "max_batch"}
MAX_DETAILS = 100  # problems listed in one answer (max_batch documents could each have one)


class BodyTooLarge(HTTPException):
    """Raised while streaming a body past ``max_body_bytes``.

    An HTTPException so that FastAPI's body parsing re-raises it instead of turning it
    into a generic 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes (max_body_bytes)")


# Routes that answer as OpenAI's API does, errors included: its clients show
# ``error.message`` of ``{"error": {"message", "type", "param", "code"}}`` and nothing else.
OPENAI_PATHS = frozenset({"/v1/embeddings"})


def error_response(status: int, code: str, message: str, request_id: str, *, path: str = "",
                   **extra: Any) -> JSONResponse:
    if path in OPENAI_PATHS:
        param = next((d.get("field") for d in extra.get("details", ()) if d.get("field")), None)
        body: dict[str, Any] = {"error": {"message": message, "type": code, "param": param, "code": code},
                                "request_id": request_id}
    else:
        body = {"error": code, "message": message, "request_id": request_id, **extra}
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


def request_id(request: Request) -> str:
    return str(request.scope.get("request_id") or "-")


def describe(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One message for a list of pydantic errors, and the details per field."""
    parts: list[str] = []
    details: list[dict[str, Any]] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        message = str(err.get("msg", "invalid"))
        field = loc[0] if loc else ""
        if not loc and err.get("type") == "model_attributes_type":
            message = "expected a JSON object (send it with Content-Type: application/json)"
        limit = None
        if field in LIMITS and len(loc) == 1 and err.get("type") in ("less_than_equal", "too_long", "string_too_long"):
            limit = LIMITS[field]
            message = f"{message} ({limit})"
        parts.append(f"{where}: {message}")
        details.append({"field": where, "message": message, "type": err.get("type"), **({"limit": limit} if limit else {})})
    return "; ".join(parts[:5]) + (f"; and {len(parts) - 5} more" if len(parts) > 5 else ""), details


def install(app: FastAPI) -> None:
    """Register the handlers that turn every expected error into the JSON shape above."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = list(exc.errors())
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = bad_json[0].get("ctx") or {}
            where = bad_json[0].get("loc", ("body", "?"))[-1]
            reason = ctx.get("error", "cannot be parsed")
            return error_response(400, "malformed_json",
                                  f"the request body is not valid JSON: {reason} (at character {where})",
                                  request_id(request), path=request.url.path)
        message, details = describe(errs)
        return error_response(422, "invalid_request", message, request_id(request), path=request.url.path,
                              details=details)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        response = error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail),
                                  request_id(request), path=request.url.path)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RetrievalError)
    async def _retrieval(request: Request, exc: RetrievalError) -> JSONResponse:
        if exc.http_status >= 500:
            log.error("%s (request id %s): %s", type(exc).__name__, request_id(request), exc)
        extra: dict[str, Any] = {}
        if isinstance(exc, InvalidInputError):  # every refused document, as the CLI lists them
            extra["details"] = [{"message": p} for p in exc.problems[:MAX_DETAILS]]
        return error_response(exc.http_status, exc.code, str(exc), request_id(request), path=request.url.path, **extra)

    @app.exception_handler(RecursionError)
    async def _nested(request: Request, _exc: RecursionError) -> JSONResponse:
        return error_response(400, "malformed_json", "the request body is nested too deeply", request_id(request),
                              path=request.url.path)
