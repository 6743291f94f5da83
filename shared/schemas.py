"""Request and job schemas shared by the API (validation, responses) and the workers.

Request fields are defined once here and reused by every route that takes a
chat request (``/v1/jobs``, ``/invocations``, ``/v1/chat/completions``...).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.personas import Persona


class JobStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled})


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


# Sampling fields, defined once (None = the model's registry default).
MaxTokensField = Annotated[
    int | None, Field(None, gt=0, le=131072, description="Most tokens to generate.")
]
TemperatureField = Annotated[
    float | None, Field(None, ge=0, le=2, description="Sampling temperature; 0 is greedy.")
]
TopPField = Annotated[float | None, Field(None, gt=0, le=1, description="Nucleus sampling.")]
SeedField = Annotated[
    int | None, Field(None, ge=0, lt=2**32, description="Seed for reproducible sampling.")
]
StopField = Annotated[
    str | list[str] | None,
    Field(None, description="Up to 4 strings that end generation (not included in output)."),
]


class SamplingParams(BaseModel):
    """Generation parameters as the worker receives them (defaults already applied)."""

    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str] = []
    seed: int | None = None


class JobRequest(BaseModel):
    """Body of ``POST /v1/jobs`` (and ``/invocations``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Registry model name; default model if absent.")
    messages: list[Message] = Field(min_length=1, description="OpenAI-style chat messages.")
    conversation_id: str | None = Field(
        None, min_length=1, max_length=128,
        description="Continue this conversation (send only the new turn); a new one if absent.",
    )
    persona: Persona | None = Field(
        None, description="`office` or `character` persona; kept on the conversation."
    )
    user_id: str | None = Field(
        None, max_length=128, description="The end user; conversations are listed by it."
    )
    max_tokens: MaxTokensField = None
    temperature: TemperatureField = None
    top_p: TopPField = None
    stop: StopField = None
    seed: SeedField = None
    metadata: dict[str, Any] | None = Field(None, description="Caller data, returned as given.")

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if len(items) > 4 or any(not s for s in items):
            raise ValueError("stop takes at most 4 non-empty strings")
        return value

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(BaseModel):
    queue_wait_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    tokens_per_s: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class Job(BaseModel):
    """What ``GET /v1/jobs/{id}`` returns."""

    id: str
    object: Literal["chat.job"] = "chat.job"
    status: JobStatus
    model: str
    queue: str
    position: int | None = Field(None, description="Jobs ahead of this one while queued.")
    output: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings = Timings()
    error: JobError | None = None
    attempts: int = 0
    conversation_id: str | None = None
    persisted: bool | None = Field(
        None, description="The turn is in the conversation store (false: queued for retry)."
    )
    history_messages: int | None = Field(
        None, description="Stored conversation messages included in the prompt."
    )
    history_trimmed: int | None = Field(
        None, description="Oldest stored messages left out to fit the model's context."
    )
    metadata: dict[str, Any] | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


def utc(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
