"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``: chatq's
own errors, invalid requests, Redis outages, and Starlette's plain HTTP errors (an
unknown path or static file, a wrong method).

On the OpenAI paths errors take OpenAI's shape (``{"error": {"message", "type",
"param", "code"}}``) and an invalid request is ``400`` (not ``422``), ``param``
naming the field, as the SDKs and client libraries expect."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.utils import is_body_allowed_for_status_code
from redis.exceptions import OutOfMemoryError, RedisError
from starlette.exceptions import HTTPException

from shared.errors import ChatqError, InvalidRequest, Unavailable

log = logging.getLogger(__name__)


# Paths whose errors use OpenAI's error object (the SDK parses it).
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models", "/v1/completions", "/v1/embeddings",
                "/v1/responses", "/v1/files", "/v1/batches")
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                 404: "not_found_error", 409: "invalid_request_error",
                 422: "invalid_request_error", 429: "rate_limit_error"}


def openai_body(exc: ChatqError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as OpenAI answers errors."""
    param = exc.param
    if isinstance(exc.details, list) and exc.details and isinstance(exc.details[0], dict):
        param = exc.details[0].get("field")
    return {"error": {"message": exc.message,
                      "type": _OPENAI_TYPES.get(exc.status, "server_error"),
                      "param": param, "code": exc.code}}


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":  # OpenAI's wording for an unknown field
        return "unrecognized request argument: chatq does not support it"
    return str(error["msg"])


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    problems = [
        {"field": _field(tuple(e["loc"])), "message": _message(e), "type": e["type"]}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return InvalidRequest(f"invalid request: {summary}", details=problems)


def error_response(path: str, exc: ChatqError) -> JSONResponse:
    """``exc`` as the caller of ``path`` expects it (OpenAI's shape on its paths)."""
    if not path.startswith(OPENAI_PATHS):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)
    # OpenAI answers every invalid request 400 (its SDK raises BadRequestError on it).
    status = 400 if isinstance(exc, InvalidRequest) else exc.status
    return JSONResponse(openai_body(exc), status_code=status, headers=exc.headers)


async def _chatq(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatqError)
    return error_response(request.url.path, exc)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _chatq(request, validation_error(exc))


async def _redis(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, OutOfMemoryError):  # maxmemory with noeviction: writes refused
        log.error("redis at its memory limit", extra={"path": request.url.path})
        return await _chatq(request, Unavailable("Redis is at its memory limit; try again later"))
    # Redis's own message names its host and port: for the log, not for the caller.
    log.warning("redis unreachable", extra={"path": request.url.path, "error": str(exc)})
    return await _chatq(request, Unavailable("Redis is unreachable; try again shortly"))


HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if not is_body_allowed_for_status_code(exc.status_code):
        return Response(status_code=exc.status_code, headers=exc.headers)
    message = f"{exc.detail}: {request.method} {request.url.path}"
    body = {"error": {"code": HTTP_CODES.get(exc.status_code, "http_error"),
                      "message": message, "details": None}}
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


def install(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(ChatqError, _chatq)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(RedisError, _redis)
