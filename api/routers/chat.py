"""``POST /v1/chat/completions`` in OpenAI's wire format, through chatq's queues.

The response ``id`` is the chatq job id (``GET /v1/jobs/{id}`` works on it).
If the client goes away before the answer is complete, its job is cancelled.
Errors on this path use OpenAI's error object (see ``api.errors``). Tool calls are
read from the finished answer (``shared.tools``); a stream holds back the text
that may still be a call (:class:`_Held`) and sends the call as ``delta.tool_calls``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from api import jobs
from api import openai_wire as wire
from api.admission import Work, admit
from api.deps import ServicesDep, TenantDep
from api.openai_wire import StreamOptions
from api.services import Services
from api.sse import data
from shared.errors import InvalidRequest, UnsupportedParameter
from shared.events import LogprobEntry
from shared.lifecycle import JobRecord
from shared.schemas import JobRequest, MaxTokensField, Message, SamplingFields
from shared.tools import ToolSet, could_be_call
from shared.views import tool_calls

router = APIRouter(prefix="/v1/chat", tags=["openai"])


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


class ChatCompletionRequest(SamplingFields):
    """OpenAI's chat request. Every field is either honoured or refused with a ``400``
    naming it (:meth:`refusals`); an unknown field is refused too, never ignored. The
    sampling and tool fields are :class:`SamplingFields`, as on ``POST /v1/jobs``."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: MaxTokensField = None
    n: StrictInt | None = Field(None, ge=1, description="Choices to return: chatq returns one.")
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

    def to_work(self) -> Work:
        """The chat job; ``user`` joins the caller's ``metadata`` in the job's."""
        return replace(Work.chat(self.to_job()), end_user=self.user)

    def to_job(self) -> JobRequest:
        problems = self.refusals()
        if problems:
            raise UnsupportedParameter.of_fields(problems)
        try:
            return JobRequest(
                model=self.model, messages=[m.to_message() for m in self.messages],
                max_tokens=self.max_completion_tokens or self.max_tokens,
                metadata=self.metadata,
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


def _logprobs(entries: list[LogprobEntry] | None) -> dict[str, Any] | None:
    """OpenAI's ``choices[].logprobs`` (None: not asked for)."""
    if entries is None:
        return None
    return {"content": [e.model_dump() for e in entries], "refusal": None}


CHUNK = "chat.completion.chunk"


def _chunk(record: JobRecord, created: int, delta: dict[str, Any], finish: str | None = None,
           *, usage: bool = False, logprobs: list[LogprobEntry] | None = None) -> str:
    """A content chunk; with ``usage`` (include_usage asked) it carries ``"usage": null``."""
    choice = {"index": 0, "delta": delta, "logprobs": _logprobs(logprobs),
              "finish_reason": finish}
    body = wire.envelope(record, created, CHUNK, [choice])
    if usage:
        body["usage"] = None
    return data(body)


@router.post("/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse | StreamingResponse:
    record = (await admit(svc, body.to_work(), tenant)).record
    created = int(record.created_at)
    if body.stream:
        usage = wire.include_usage(body.stream_options)
        return wire.stream_response(svc, record, _stream(svc, record, tenant, created, usage))

    return await wire.respond(request, svc, record, tenant, partial(answer, svc, body))


async def answer(svc: Services, _: ChatCompletionRequest, record: JobRecord,
                 output: str) -> dict[str, Any]:
    """The ``chat.completion`` of a finished job."""
    calls = tool_calls(record, output)
    message: dict[str, Any] = {"role": "assistant", "content": output, "refusal": None}
    logprobs = await jobs.answer_logprobs(svc, record)
    if calls:  # the logprobs are the content's: a call has none
        message = {**message, "content": None, "tool_calls": calls}
        logprobs = [] if logprobs is not None else None
    choice = {"index": 0, "logprobs": _logprobs(logprobs), "message": message,
              "finish_reason": _finish(record, calls)}
    return {**wire.envelope(record, int(record.created_at), "chat.completion", [choice]),
            "usage": wire.usage(record)}


BATCH = wire.BatchRoute("/v1/chat/completions", ChatCompletionRequest, answer)


def _finish(record: JobRecord, calls: list[dict[str, Any]]) -> str:
    if calls:
        return "tool_calls"
    return wire.finish_reason(record)


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
    held = _Held(record)
    yield _chunk(record, created, {"role": "assistant", "content": ""}, usage=usage)
    async for event in wire.tokens(svc, record):
        if isinstance(event, str):
            yield event
            continue
        text, lps = held.add(event.text, event.logprobs or [])
        if text:
            yield _chunk(record, created, {"content": text}, usage=usage,
                         logprobs=lps if record.params.logprobs else None)

    def closing(final: JobRecord, output: str) -> list[str]:
        return _closing(final, output, held, created, usage)

    async for line in wire.ending(svc, record, tenant, closing):
        yield line


def _closing(final: JobRecord, output: str, held: _Held, created: int,
             usage: bool) -> list[str]:
    """The chunks after the tokens: a tool call, or the text held back in case it was
    one; the finish reason; the usage when asked."""
    lines = []
    calls = tool_calls(final, output)
    if calls:
        deltas = [{"index": i, **call} for i, call in enumerate(calls)]
        lines.append(_chunk(final, created, {"tool_calls": deltas}, usage=usage))
    elif held.text:  # held back in case it was a call: it was not
        lines.append(_chunk(final, created, {"content": held.text}, usage=usage,
                            logprobs=held.logprobs if final.params.logprobs else None))
    lines.append(_chunk(final, created, {}, _finish(final, calls), usage=usage))
    if usage:
        lines.append(wire.usage_chunk(final, created, CHUNK))
    return lines
