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
from pydantic import BaseModel, ConfigDict, Field

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.errors import openai_body
from api.routers.events import KEEPALIVE, SSE_HEADERS
from api.services import Services
from shared.errors import InvalidRequest, JobFailed, UnsupportedParameter
from shared.events import KeepaliveEvent, LogprobEntry, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import (
    JobRequest,
    JobStatus,
    MaxTokensField,
    Message,
    SamplingFields,
)
from shared.tools import ToolSet, could_be_call
from shared.views import tool_calls

router = APIRouter(prefix="/v1/chat", tags=["openai"])

# chatq's finish reasons as OpenAI names them (a cancelled job stopped).
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


class ContentPart(BaseModel):
    """A part of a message's content: text; any other type (``image_url``,
    ``input_audio``, ``file``...) is refused, naming it (chatq's models are text-only)."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    refusal: str | None = None  # an earlier answer's (always null from chatq)
    name: str | None = None  # refused except on a tool message (see refusals)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def to_message(self) -> Message:
        text = (self.content if isinstance(self.content, str)
                else "".join(p.text or "" for p in self.content or []))
        return Message(role="system" if self.role == "developer" else self.role, content=text,
                       tool_calls=self.tool_calls, tool_call_id=self.tool_call_id)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class ChatCompletionRequest(SamplingFields):
    """OpenAI's chat request. Every field is either honoured or refused with a ``400``
    naming it (:meth:`refusals`); an unknown field is refused too, never ignored. The
    sampling and tool fields are :class:`SamplingFields`, as on ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokensField = None
    n: int | None = Field(None, ge=1, description="Choices to return: chatq returns one.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="Kept in the job's metadata.")
    metadata: dict[str, str] | None = Field(None, description="Kept in the job's metadata.")
    # Refused unless neutral (see refusals).
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None
    # The deprecated forerunners of tools (refused: see refusals).
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None

    def refusals(self) -> list[tuple[str, str]]:
        """``(param, why)`` for each parameter asked for that chatq does not implement."""
        problems = refuse_functions(self)
        if self.n is not None and self.n > 1:
            problems.append(("n", "chatq returns one choice: n must be 1"))
        if self.modalities is not None and self.modalities != ["text"]:
            problems.append(("modalities", "chatq answers text only"))
        if self.audio is not None:
            problems.append(("audio", "chatq answers text only"))
        if self.stream_options is not None and not self.stream:
            problems.append(("stream_options", "stream_options is only allowed when stream "
                                               "is true"))
        for i, m in enumerate(self.messages):
            for j, part in enumerate(m.content if isinstance(m.content, list) else []):
                if part.type != "text":
                    problems.append((f"messages.{i}.content.{j}.type",
                                     f"content of type {part.type!r} is not supported: the "
                                     "model takes text only"))
                elif part.text is None or set(part.model_extra or {}):
                    problems.append((f"messages.{i}.content.{j}",
                                     "a text part is {\"type\": \"text\", \"text\": ...}"))
        return problems

    def to_job(self) -> JobRequest:
        problems = self.refusals()
        if problems:
            raise UnsupportedParameter.of_fields(problems)
        metadata = {**(self.metadata or {}), **({"user": self.user} if self.user else {})}
        try:
            return JobRequest(
                model=self.model, messages=[m.to_message() for m in self.messages],
                max_tokens=self.max_completion_tokens or self.max_tokens,
                metadata=metadata or None,
                **self.model_dump(include=_SHARED, exclude_none=True, by_alias=True),
            )
        except ValueError as exc:
            raise InvalidRequest(f"invalid request: {exc}") from exc


# Fields chatq's own request shares with OpenAI's, passed on as they are.
_SHARED = {"temperature", "top_p", "stop", "seed", "top_k", "min_p", "repeat_penalty",
           "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
           "response_format", "tools", "tool_choice", "parallel_tool_calls"}


def refuse_functions(body: ChatCompletionRequest) -> list[tuple[str, str]]:
    """The deprecated ``functions``/``function_call`` (use ``tools``/``tool_choice``),
    and a message ``name`` (chatq's prompt has no participant names; a tool message
    may carry its function's name, as LangChain sends it)."""
    problems = [(name, f"deprecated: use {new} instead") for name, new in
                (("functions", "tools"), ("function_call", "tool_choice"))
                if getattr(body, name) is not None]
    problems += [(f"messages.{i}.name", "message names are not supported")
                 for i, m in enumerate(body.messages) if m.name is not None and m.role != "tool"]
    return problems


def _data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _logprobs(entries: list[LogprobEntry] | None) -> dict[str, Any] | None:
    """OpenAI's ``choices[].logprobs`` (None: not asked for)."""
    if entries is None:
        return None
    return {"content": [e.model_dump() for e in entries], "refusal": None}


def _chunk(record: JobRecord, created: int, delta: dict[str, Any], finish: str | None = None,
           *, usage: bool = False, logprobs: list[LogprobEntry] | None = None) -> str:
    """A content chunk; with ``usage`` (include_usage asked) it carries ``"usage": null``."""
    choice = {"index": 0, "delta": delta, "logprobs": _logprobs(logprobs),
              "finish_reason": finish}
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
    done = await wait_unless_disconnected(request, svc, record, tenant)
    if done is None:
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    record, output = done
    if record.status is JobStatus.failed:
        raise JobFailed(record.id, record.error)
    calls = tool_calls(record, output)
    message: dict[str, Any] = {"role": "assistant", "content": output, "refusal": None}
    logprobs = await jobs.answer_logprobs(svc, record)
    if calls:  # the logprobs are the content's: a call has none
        message = {**message, "content": None, "tool_calls": calls}
        logprobs = [] if logprobs is not None else None
    return JSONResponse({
        "id": record.id, "object": "chat.completion", "created": created,
        "model": record.model, "system_fingerprint": None,
        "choices": [{"index": 0, "logprobs": _logprobs(logprobs), "message": message,
                     "finish_reason": _finish(record, calls)}],
        "usage": _usage(record),
    })


def _finish(record: JobRecord, calls: list[dict[str, Any]]) -> str:
    if calls:
        return "tool_calls"
    return openai_finish(record)


def openai_finish(record: JobRecord) -> str:
    """The job's finish reason as OpenAI names it."""
    return FINISH_REASONS.get(record.finish_reason or "stop", "stop")


async def wait_unless_disconnected(
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
        self.logprobs: list[LogprobEntry] = []  # the held text's

    def add(self, text: str, logprobs: list[LogprobEntry]) -> tuple[str, list[LogprobEntry]]:
        """What may go out now, with its logprobs."""
        if not self.holding:
            return text, logprobs
        self.text += text
        self.logprobs += logprobs
        if self.forced or could_be_call(self.text):
            return "", []
        released = (self.text, self.logprobs)
        self.holding, self.text, self.logprobs = False, "", []
        return released


async def _stream(
    svc: Services, record: JobRecord, tenant: str, created: int, usage: bool
) -> AsyncIterator[str]:
    finished = False
    held = _Held(record)
    try:
        yield _chunk(record, created, {"role": "assistant", "content": ""}, usage=usage)
        async for event in jobs.iterate_events(svc, record, join_tokens=True):
            if isinstance(event, TokenEvent):
                text, lps = held.add(event.text, event.logprobs or [])
                if text:
                    yield _chunk(record, created, {"content": text}, usage=usage,
                                 logprobs=lps if record.params.logprobs else None)
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
            yield _chunk(final, created, {"content": held.text}, usage=usage,
                         logprobs=held.logprobs if final.params.logprobs else None)
        yield _chunk(final, created, {}, _finish(final, calls), usage=usage)
        if usage:
            yield _data({**_chunk_body(final, created, []), "usage": _usage(final)})
    yield "data: [DONE]\n\n"
