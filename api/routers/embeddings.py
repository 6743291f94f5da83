"""``POST /v1/embeddings`` in OpenAI's wire format, through chatq's queues.

The texts go to the model's worker as one :attr:`shared.schemas.JobKind.embedding`
job (queue, lifecycle, recovery like any job); the worker writes the vectors to
the job's ``result`` (as :mod:`shared.vectors` packs them) and the API answers
with them. The vectors are unit length (L2-normalised, as OpenAI's are): a model
marked ``embedding`` in the registry is pooled as its GGUF says, any other by the
mean of its token embeddings.

Refused with 400 naming the field: token-id arrays as ``input``, an empty text,
``dimensions`` (no truncation is done), and any field OpenAI does not define.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import openai_wire as wire
from api.admission import Work, admit
from api.deps import ServicesDep, TenantDep
from api.services import Services
from shared import vectors
from shared.errors import JobFailed, UnsupportedParameter
from shared.lifecycle import JobRecord
from shared.schemas import JobKind, JobStatus

router = APIRouter(prefix="/v1", tags=["openai"])

MAX_INPUTS = 2048  # OpenAI's limit of texts per request


class EmbeddingRequest(BaseModel):
    """OpenAI's ``CreateEmbeddingRequest``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Registry model name; absent: the first "
                              "model marked `embedding` in the registry, else the default.")
    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="A text or a list of texts (at most 2048, none empty). Token-id arrays "
                    "are not supported.")
    encoding_format: Literal["float", "base64"] | None = Field(
        "float", description="`float` (or null): lists of numbers; `base64`: each vector "
                             "as the base64 of its little-endian float32 values.")
    dimensions: int | None = Field(None, description="Not supported: absent or null.")
    user: str | None = Field(None, max_length=128, description="The end user.")

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str] | list[int] | list[list[int]]
               ) -> str | list[str] | list[int] | list[list[int]]:
        items = [value] if isinstance(value, str) else value
        if not items:
            raise ValueError("give at least one text")
        if any(not isinstance(t, str) for t in items):
            raise ValueError("token-id arrays are not supported: give text")
        if len(items) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} texts per request")
        if any(not t for t in items):
            raise ValueError("a text to embed is empty")
        return value

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else [str(t) for t in self.input]

    def to_work(self) -> Work:
        """The texts as a job of their own kind (:attr:`JobKind.embedding`); no model
        named: the registry's embedding model."""
        if self.dimensions is not None:
            raise UnsupportedParameter.of_fields(
                [("dimensions", "chatq returns the model's full vectors: dimensions is not "
                                "supported")])
        return Work(kind=JobKind.embedding, model=self.model, inputs=self.texts(),
                    metadata={"user": self.user} if self.user else None)


def response(model: str, packed: list[str], usage: dict[str, int] | None,
             encoding_format: str) -> dict[str, Any]:
    """OpenAI's answer for the job's vectors (packed as :mod:`shared.vectors` says):
    passed through as base64, or decoded to numbers."""
    prompt_tokens = (usage or {}).get("prompt_tokens", 0)
    embeddings: list[str] | list[list[float]] = (
        packed if encoding_format == "base64" else [vectors.unpack(v) for v in packed])
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e}
                 for i, e in enumerate(embeddings)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


@router.post("/embeddings", response_model=None,
             summary="Embed texts (OpenAI embeddings)")
async def embeddings(
    body: EmbeddingRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse:
    record = (await admit(svc, body.to_work(), tenant)).record

    return await wire.respond(request, svc, record, tenant, partial(answer, svc, body))


async def answer(_: Services, body: EmbeddingRequest, record: JobRecord,
                 __: str) -> dict[str, Any]:
    """The embeddings of a finished job (a failed one raises its error)."""
    if record.status is not JobStatus.succeeded or not record.result:
        raise JobFailed(record.id, record.error or {
            "code": record.status.value, "message": f"the job ended {record.status}"})
    return response(record.model, record.result[vectors.RESULT_KEY], record.usage,
                    body.encoding_format or "float")


BATCH = wire.BatchRoute("/v1/embeddings", EmbeddingRequest, answer)
