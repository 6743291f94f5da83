"""chatq's exceptions, drawn once.

    ChatqError                      code, HTTP status, message, details
    ├── ConfigError                 bad settings or registry: refuse to start
    ├── InvalidRequest      422     a field is wrong (names the field)
    ├── ContextOverflow     400     prompt + max_tokens over the model's context
    ├── Unauthorized        401     missing or unknown API key
    ├── NotFound            404     no such job / model / conversation (for this tenant)
    │   └── UnknownModel    404     lists the known models
    ├── Conflict            409     e.g. cancelling a finished job
    ├── Gone                410     the job's result is past its retention
    ├── QueueFull           429     the model's queue is at its depth limit
    └── Unavailable         503     Redis down, no live worker on a queue...

Foreign errors (redis, pymongo, llama.cpp) are translated at the boundary with
``raise ... from exc``; the API maps ChatqError to HTTP in one handler.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ChatqError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(
        self, message: str, details: Any = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(ChatqError):
    code = "config_error"


class InvalidRequest(ChatqError):
    code = "invalid_request"
    status = 422


class ContextOverflow(ChatqError):
    code = "context_length_exceeded"
    status = 400


class Unauthorized(ChatqError):
    code = "unauthorized"
    status = 401


class NotFound(ChatqError):
    code = "not_found"
    status = 404


class UnknownModel(NotFound):
    code = "model_not_found"


class Conflict(ChatqError):
    code = "conflict"
    status = 409


class Gone(ChatqError):
    code = "gone"
    status = 410


class QueueFull(ChatqError):
    code = "queue_full"
    status = 429


class Unavailable(ChatqError):
    code = "unavailable"
    status = 503
