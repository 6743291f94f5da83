"""The events of a job, defined once: what producers write and consumers read.

Two streams carry them:

- A job's **stream events** (:data:`StreamEvent`): ``token`` (written by the
  worker's emitter), ``status`` (written by the lifecycle scripts, in Lua) and
  ``keepalive`` (made by the API while a stream is idle). They go to the job's
  replay log and its pub/sub channel as compact JSON, a pub/sub message being a
  JSON array of them. ``done`` and ``error`` end an SSE stream: the API builds
  them from the final job.
- The **transition log** (:class:`Transition`): one Redis Stream entry per state
  change of any job, appended by the script that makes the change, read by
  consumer groups with acknowledgement (see :mod:`shared.transitions`).

The Lua scripts build status events and transitions by hand; tests parse what
they write with these models (``extra="forbid"``), so the two cannot drift.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.schemas import JobStatus

_STRICT = ConfigDict(extra="forbid", frozen=True)


class TopLogprobEntry(BaseModel):
    model_config = _STRICT

    token: str
    logprob: float
    bytes: list[int]


class LogprobEntry(BaseModel):
    """OpenAI's per-token logprob object."""

    model_config = _STRICT

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprobEntry] = []


class TokenEvent(BaseModel):
    """New text of the answer; ``seq`` counts token events from 1, without gaps."""

    model_config = _STRICT

    type: Literal["token"] = "token"
    seq: int
    text: str
    logprobs: list[LogprobEntry] | None = None


class StatusEvent(BaseModel):
    """The job moved to ``status`` (``attempt``: the delivery that started it running)."""

    model_config = _STRICT

    type: Literal["status"] = "status"
    status: JobStatus
    attempt: int | None = None


class KeepaliveEvent(BaseModel):
    """Nothing happened for a while (an SSE comment line on the wire)."""

    model_config = _STRICT

    type: Literal["keepalive"] = "keepalive"


class DoneEvent(BaseModel):
    """The stream ends: the job finished without failing (``job`` as ``GET /v1/jobs/{id}``)."""

    model_config = _STRICT

    type: Literal["done"] = "done"
    job: dict[str, Any]

    def sse_data(self) -> dict[str, Any]:
        """Its SSE data: the job itself (the contract's ``event: done``)."""
        return self.job


class ErrorEvent(BaseModel):
    """The stream ends: the job failed."""

    model_config = _STRICT

    type: Literal["error"] = "error"
    error: dict[str, Any] | None
    job: dict[str, Any]

    def sse_data(self) -> dict[str, Any]:
        return {"error": self.error, "job": self.job}


StreamEventT = TokenEvent | StatusEvent | KeepaliveEvent
StreamEvent = Annotated[StreamEventT, Field(discriminator="type")]
_stream_events: TypeAdapter[list[StreamEventT]] = TypeAdapter(list[StreamEvent])


def encode(event: BaseModel) -> str:
    """Compact JSON, without unset optional fields (what Redis stores and publishes)."""
    return event.model_dump_json(exclude_none=True)


def parse_batch(raw: str | bytes) -> list[StreamEventT]:
    """A pub/sub message: a JSON array of stream events."""
    return _stream_events.validate_json(raw)


def parse_log(raw: list[str]) -> list[StreamEventT]:
    """A replay log: one JSON event per item."""
    return _stream_events.validate_json("[" + ",".join(raw) + "]")


def is_terminal(event: StreamEventT) -> bool:
    return isinstance(event, StatusEvent) and event.status.terminal


class Transition(BaseModel):
    """One state change of a job, as the transition log holds it."""

    model_config = _STRICT

    job_id: str
    queue: str
    tenant: str
    from_status: str = Field(alias="from")  # '' when the job was just created
    to: str  # a JobStatus, 'discarded' (the broker never took it: no job) or 'deleted'
    at: float
    attempt: int
    code: str  # why, where it says more than the statuses (worker_lost, expired...)

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Transition:
        return cls.model_validate(fields)

    def dump(self) -> str:
        return json.dumps(self.model_dump(by_alias=True))
