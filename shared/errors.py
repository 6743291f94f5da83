"""chatq's exceptions, drawn once.

    ChatqError                      code, HTTP status, message, details
    ├── ConfigError                 bad settings or registry: refuse to start
    ├── InvalidRequest      422     a field is wrong (names the field)
    │   ├── UnsafeWebhook   422     a webhook target chatq must not call (SSRF guard)
    │   └── InvalidTools    400     a malformed tool, tool_choice or tool message (names it)
    │       └── OverLimit   400     over an input budget (names the field and the limit)
    ├── BodyTooLarge        413     a request body over its budget, refused unread
    ├── ContextOverflow     400     prompt + max_tokens over the model's context
    ├── UnsupportedParameter 400    a sampling parameter the model's upstream cannot
    │                               honour (names it)
    ├── Unauthorized        401     missing or unknown API key
    ├── Forbidden           403     a valid key without the right (an operator view)
    ├── NotFound            404     no such job / model / conversation (for this tenant)
    │   └── UnknownModel    404     lists the known models
    ├── Conflict            409     e.g. cancelling a finished job
    │   ├── JobCancelled    409     a blocking call's job was cancelled meanwhile
    │   └── IdempotencyConflict 409 an Idempotency-Key reused with another body, or
    │                               its first request still in progress
    ├── Gone                410     the job's result is past its retention
    ├── QueueFull           429     the model's queue is at its depth limit
    ├── Unavailable         503     Redis down, no live worker on a queue...
    └── JobFailed           500     a blocking call's job failed (504 on a timeout, 502
                                    when its upstream failed, 400 when its upstream
                                    refused the request); the job's own error code

Foreign errors (redis, pymongo, llama.cpp) are translated at the boundary with
``raise ... from exc``; the API maps ChatqError to HTTP in one handler.
"""

from __future__ import annotations

from typing import Any


class ChatqError(Exception):
    """``code`` and ``status`` are the class's unless given (a failed job carries its own)."""

    code: str = "internal_error"
    status: int = 500
    param: str | None = None  # the request field at fault, where no detail names one

    def __init__(
        self, message: str, details: Any = None, headers: dict[str, str] | None = None,
        *, code: str | None = None, status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ConfigError(ChatqError):
    code = "config_error"


class InvalidRequest(ChatqError):
    code = "invalid_request"
    status = 422

    @classmethod
    def of_field(cls, field: str, message: str) -> InvalidRequest:
        """A 422 naming one field, shaped like the request-validation errors."""
        return cls(f"invalid request: {field}: {message}",
                   details=[{"field": field, "message": message, "type": "value_error"}])


class UnsafeWebhook(InvalidRequest):
    """A webhook target refused: http in production, or an address chatq must not reach."""

    code = "unsafe_webhook"

    def __init__(self, message: str, field: str = "webhook") -> None:
        super().__init__(f"invalid request: {field}: {message}",
                         details=[{"field": field, "message": message, "type": self.code}])
        self.reason = message


class InvalidTools(InvalidRequest):
    """A malformed tool definition, tool choice or tool message: 400 on every path
    (as OpenAI answers it), naming the parameter."""

    status = 400


class OverLimit(InvalidTools):
    """A request over one of the deployment's input budgets (``CHATQ_LIMITS__*``):
    400 on every path, naming the field and the limit."""

    code = "limit_exceeded"


class BodyTooLarge(ChatqError):
    """A request body over ``CHATQ_LIMITS__MAX_BODY_BYTES``: refused before it is read
    in full, let alone parsed."""

    code = "request_too_large"
    status = 413


class ContextOverflow(ChatqError):
    code = "context_length_exceeded"
    status = 400
    param = "messages"


class UnsupportedParameter(ChatqError):
    code = "unsupported_parameter"
    status = 400

    @classmethod
    def of_fields(cls, problems: list[tuple[str, str]]) -> UnsupportedParameter:
        """A 400 naming each ``(field, why)``."""
        return cls("unsupported parameter: " + "; ".join(f"{f}: {why}" for f, why in problems),
                   details=[{"field": f, "message": why, "type": cls.code}
                            for f, why in problems])


class Unauthorized(ChatqError):
    code = "unauthorized"
    status = 401


class Forbidden(ChatqError):
    code = "forbidden"
    status = 403


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


class JobCancelled(Conflict):
    code = "cancelled"


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"


# The HTTP status of a blocking call whose job failed with this code (else 500).
# schema_mismatch: the model's answer did not validate (422, so SDKs do not retry it blindly)
FAILED_JOB_STATUS = {"timeout": 504, "upstream_error": 502, "upstream_rejected": 400,
                     "schema_mismatch": 422}


class JobFailed(ChatqError):
    """The job behind a blocking call (OpenAI, ancestor routes) failed."""

    def __init__(self, job_id: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        code = str(error.get("code") or "generation_error")
        super().__init__(str(error.get("message") or "generation failed"),
                         details={"job_id": job_id}, code=code,
                         status=FAILED_JOB_STATUS.get(code, 500))
