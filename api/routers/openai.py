"""``POST /v1/chat/completions`` in OpenAI's wire format, through chatq's queues.

The response ``id`` is the chatq job id (``GET /v1/jobs/{id}`` works on it).
If the client goes away before the answer is complete, its job is cancelled.
Errors on this path use OpenAI's error object (see ``api.errors``). Tool calls are
read from the finished answer (``shared.tools``); a stream holds back the text
that may still be a call (:class:`_Held`) and sends the call as ``delta.tool_calls``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.errors import openai_body
from api.routers.events import KEEPALIVE, SSE_HEADERS
from api.services import Services
from shared.errors import InvalidRequest, JobFailed
from shared.events import KeepaliveEvent, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import (
    JobRequest,
    JobStatus,
    MaxTokensField,
    Message,
    ParallelToolCallsField,
    SeedField,
    StopField,
    TemperatureField,
    ToolChoiceField,
    ToolsField,
    TopPField,
)
from shared.tools import ToolSet, could_be_call
from shared.views import tool_calls

router = APIRouter(prefix="/v1/chat", tags=["openai"])

_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop"}


class ContentPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def to_message(self) -> Message:
        text = (self.content if isinstance(self.content, str)
                else "".join(p.text for p in self.content or []))
        return Message(role="system" if self.role == "developer" else self.role, content=text,
                       tool_calls=self.tool_calls, tool_call_id=self.tool_call_id)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Fields chatq does not implement (logprobs, tools...) are ignored, as many servers do.
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokensField = None
    max_completion_tokens: MaxTokensField = None
    temperature: TemperatureField = None
    top_p: TopPField = None
    stop: StopField = None
    seed: SeedField = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    tools: ToolsField = None
    tool_choice: ToolChoiceField = None
    parallel_tool_calls: ParallelToolCallsField = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("chatq returns one choice: n must be 1")
        return n

    def to_job(self) -> JobRequest:
        try:
            return JobRequest(
                model=self.model, messages=[m.to_message() for m in self.messages],
                max_tokens=self.max_completion_tokens or self.max_tokens,
                temperature=self.temperature, top_p=self.top_p, stop=self.stop, seed=self.seed,
                tools=self.tools, tool_choice=self.tool_choice,
                parallel_tool_calls=self.parallel_tool_calls,
                metadata={"user": self.user} if self.user else None,
            )
        except ValueError as exc:
            raise InvalidRequest(f"invalid request: {exc}") from exc


def _data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _chunk(record: JobRecord, created: int, delta: dict[str, Any], finish: str | None = None,
           usage: bool = False) -> str:
    """A content chunk; with ``usage`` (include_usage asked) it carries ``"usage": null``."""
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = _chunk_body(record, created, [choice])
    if usage:
        body["usage"] = None
    return _data(body)


def _chunk_body(record: JobRecord, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": record.id, "object": "chat.completion.chunk", "created": created,
            "model": record.model, "system_fingerprint": None, "choices": choices}


def _usage(record: JobRecord) -> dict[str, int]:
    return dict(record.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})


@router.post("/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse | StreamingResponse:
    record = await jobs.submit(svc, body.to_job(), tenant)
    created = int(record.created_at)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _stream(svc, record, tenant, created, usage)
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    done = await _wait_unless_disconnected(request, svc, record, tenant)
    if done is None:
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    record, output = done
    if record.status is JobStatus.failed:
        raise JobFailed(record.id, record.error)
    calls = tool_calls(record, output)
    message: dict[str, Any] = {"role": "assistant", "content": output, "refusal": None}
    if calls:
        message = {**message, "content": None, "tool_calls": calls}
    return JSONResponse({
        "id": record.id, "object": "chat.completion", "created": created,
        "model": record.model, "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": None, "message": message,
                     "finish_reason": _finish(record, calls)}],
        "usage": _usage(record),
    })


def _finish(record: JobRecord, calls: list[dict[str, Any]]) -> str:
    if calls:
        return "tool_calls"
    return _FINISH.get(record.finish_reason or "stop", "stop")


async def _wait_unless_disconnected(
    request: Request, svc: Services, record: JobRecord, tenant: str
) -> tuple[JobRecord, str] | None:
    """Wait for the job; cancel it (and return None) if the client disconnects first."""
    timeout = svc.settings.celery.hard_time_limit_s + 60
    result: list[tuple[JobRecord, str]] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            while not await request.is_disconnected():
                await anyio.sleep(0.2)
            await jobs.cancel(svc, record)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        result.append(await jobs.wait_terminal(svc, record.id, tenant, timeout))
        tg.cancel_scope.cancel()
    return result[0] if result else None


class _Held:
    """The text a stream holds back while its answer may still be a tool call.

    With ``tool_choice`` required or a named function the answer *is* a call: all
    of it is held, and the call goes out at the end as ``delta.tool_calls``. With
    ``auto`` text is held only while the answer could still turn out to be a call
    (it begins like JSON); once it cannot, the held text goes out and the rest
    streams as it comes. Without tools (or with ``none``) nothing is held.
    """

    def __init__(self, record: JobRecord) -> None:
        toolset = ToolSet.from_json(record.tools)
        self.forced = bool(toolset and toolset.forced)
        self.holding = bool(toolset and toolset.choice != "none")
        self.text = ""

    def add(self, text: str) -> str:
        """What may go out now."""
        if not self.holding:
            return text
        self.text += text
        if self.forced or could_be_call(self.text):
            return ""
        self.holding, released, self.text = False, self.text, ""
        return released


async def _stream(
    svc: Services, record: JobRecord, tenant: str, created: int, usage: bool
) -> AsyncIterator[str]:
    finished = False
    held = _Held(record)
    try:
        yield _chunk(record, created, {"role": "assistant", "content": ""}, usage=usage)
        async for event in jobs.iterate_events(svc, record):
            if isinstance(event, TokenEvent):
                text = held.add(event.text)
                if text:
                    yield _chunk(record, created, {"content": text}, usage=usage)
            elif isinstance(event, KeepaliveEvent):
                yield KEEPALIVE
        finished = True
        final, output = await jobs.final(svc, record.id, tenant)
        async for line in _ending(final, output, held, created, usage):
            yield line
    finally:
        if not finished:  # the client went away mid-answer: stop generating for nobody
            with anyio.CancelScope(shield=True):
                await jobs.cancel(svc, record)


async def _ending(final: JobRecord, output: str, held: _Held, created: int,
                  usage: bool) -> AsyncIterator[str]:
    if final.status is JobStatus.failed:
        yield _data(openai_body(JobFailed(final.id, final.error)))
    else:
        calls = tool_calls(final, output)
        if calls:
            deltas = [{"index": i, **call} for i, call in enumerate(calls)]
            yield _chunk(final, created, {"tool_calls": deltas}, usage=usage)
        elif held.text:  # held back in case it was a call: it was not
            yield _chunk(final, created, {"content": held.text}, usage=usage)
        yield _chunk(final, created, {}, _finish(final, calls), usage=usage)
        if usage:
            yield _data({**_chunk_body(final, created, []), "usage": _usage(final)})
    yield "data: [DONE]\n\n"
