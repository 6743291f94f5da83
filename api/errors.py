"""Every error leaves the API as ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from shared.errors import ChatqError, InvalidRequest, Unavailable

log = logging.getLogger(__name__)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def validation_error(exc: RequestValidationError) -> InvalidRequest:
    problems = [
        {"field": _field(tuple(e["loc"])), "message": e["msg"], "type": e["type"]}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return InvalidRequest(f"invalid request: {summary}", details=problems)


async def _chatq(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ChatqError)
    headers = getattr(exc, "headers", None)
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return await _chatq(request, validation_error(exc))


async def _redis(request: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unreachable", extra={"path": request.url.path, "error": str(exc)})
    return await _chatq(request, Unavailable(f"Redis is unreachable ({exc})"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(ChatqError, _chatq)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(RedisError, _redis)
