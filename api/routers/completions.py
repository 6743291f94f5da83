"""``POST /v1/completions``: OpenAI's legacy prompt completion, through chatq's queues.

The prompt is fed to the model as it is (no chat template, no persona, no
conversation): a :attr:`shared.schemas.JobKind.completion` job on the model's
queue, run by its worker like any chat job. The response ``id`` is the job id
(``GET /v1/jobs/{id}`` works on it); a client that goes away cancels its job.

Nothing is silently ignored: a field chatq does not implement (``suffix``,
``best_of`` > 1, ``n`` > 1, ``echo`` with ``logprobs``) answers 400 naming it, as
does any field OpenAI does not define. ``logprobs`` comes in the legacy shape
(``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset`` counted from the
start of the prompt), from the answer's token events.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.errors import openai_body
from api.routers.events import KEEPALIVE, SSE_HEADERS
from api.routers.openai import StreamOptions, openai_finish, wait_unless_disconnected
from api.services import Services
from shared.errors import InvalidRequest, JobFailed, UnsupportedParameter
from shared.events import KeepaliveEvent, LogprobEntry, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import (
    JobKind,
    JobRequest,
    JobStatus,
    MaxTokensField,
    Message,
    SeedField,
    StopField,
    TemperatureField,
    TopPField,
)

router = APIRouter(prefix="/v1", tags=["openai"])

class CompletionRequest(BaseModel):
    """OpenAI's ``CreateCompletionRequest``; fields chatq does not implement are refused."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Registry model name; default model if absent.")
    prompt: str | list[str] = Field(
        description="The text to complete, fed as it is (no chat template); a list of "
                    "exactly one string is taken too.")
    max_tokens: MaxTokensField = 16
    temperature: TemperatureField = None
    top_p: TopPField = None
    stop: StopField = None
    seed: SeedField = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=128, description="The end user (kept in the "
                             "job's metadata).")
    presence_penalty: float | None = Field(
        None, ge=-2, le=2, description="Lowers the logit of every token already generated "
                                       "(recent ones) by this much.")
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="Lowers a token's logit by this much per time it "
                                       "was generated (recent ones).")
    logit_bias: dict[str, float] | None = Field(
        None, description="Token id (a string of digits) -> bias added to its logit, "
                          "-100 to 100 (-100 bans the token).")
    n: int = Field(1, description="Only 1: chatq returns one choice.")
    best_of: int | None = Field(None, description="Only 1 (or absent).")
    echo: bool = Field(False, description="Return the prompt before the completion (not "
                       "with `logprobs`: chatq does not score the prompt).")
    suffix: str | None = Field(None, description="Not supported (insertion): absent or null.")
    logprobs: int | None = Field(None, ge=0, le=5, description="Log probabilities of "
                                 "the sampled tokens and of this many most likely "
                                 "alternatives at each (0 to 5).")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        texts = [prompt] if isinstance(prompt, str) else prompt
        if len(texts) != 1:
            raise ValueError("chatq completes one prompt per request: give a string (or a "
                             "list of exactly one)")
        if not texts[0]:
            raise ValueError("the prompt is empty")
        return prompt

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        return JobRequest.check_stop(value)

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for token, value in (bias or {}).items():
            if not token.isdigit():
                raise ValueError(f"keys are token ids (strings of digits), not {token!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"token {token}: a bias is between -100 and 100")
        return bias

    def sampling_overrides(self) -> dict[str, Any]:
        """The sampling fields of this path that a chat request does not carry."""
        given = {"presence_penalty": self.presence_penalty,
                 "frequency_penalty": self.frequency_penalty,
                 "logit_bias": {int(t): v for t, v in self.logit_bias.items()}
                 if self.logit_bias else None,
                 "logprobs": True if self.logprobs is not None else None,
                 "top_logprobs": self.logprobs or None}
        return {k: v for k, v in given.items() if v is not None}

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]

    def refused(self) -> list[tuple[str, str]]:
        """``(field, why)`` for each field set to something chatq does not do."""
        problems = []
        if self.n != 1:
            problems.append(("n", "chatq returns one choice: n must be 1"))
        if self.best_of not in (None, 1):
            problems.append(("best_of", "chatq returns one choice: best_of must be 1"))
        if self.echo and self.logprobs is not None:
            problems.append(("echo", "echo with logprobs is not supported (chatq does not "
                                     "compute the prompt's logprobs)"))
        if self.suffix is not None:
            problems.append(("suffix", "insertion after a suffix is not supported"))
        if self.stream_options is not None and not self.stream:
            problems.append(("stream_options", "stream_options is only allowed when stream "
                                               "is true"))
        return problems

    def to_job(self) -> JobRequest:
        """The model and sampling fields, as the job's request (its one message is the
        prompt, so stop strings and limits are checked the way /v1/jobs checks them)."""
        problems = self.refused()
        if problems:
            raise UnsupportedParameter.of_fields(problems)
        try:
            return JobRequest(
                model=self.model, messages=[Message(role="user", content=self.text())],
                max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                stop=self.stop, seed=self.seed,
                metadata={"user": self.user} if self.user else None)
        except ValueError as exc:
            raise InvalidRequest(f"invalid request: {exc}", status=400) from exc


def _data(body: dict[str, Any]) -> str:
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def _body(record: JobRecord, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": record.id, "object": "text_completion", "created": created,
            "model": record.model, "system_fingerprint": None, "choices": choices}


def _choice(text: str, finish: str | None, logprobs: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    return {"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}


def legacy_logprobs(entries: list[LogprobEntry], offset: int) -> dict[str, Any]:
    """The legacy completions' logprobs object for these tokens, whose text starts at
    ``offset`` characters after the start of the prompt."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": [e.token for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            "text_offset": offsets}


async def _answer_logprobs(svc: Services, record: JobRecord) -> list[LogprobEntry]:
    """The logprobs of the answer's tokens, from its token events."""
    events = await jobs.read_log(svc, record.id)
    return [e for ev in events if isinstance(ev, TokenEvent) for e in ev.logprobs or []]


def _usage(record: JobRecord) -> dict[str, int]:
    return dict(record.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})


@router.post("/completions", response_model=None,
             summary="Complete a prompt (OpenAI legacy completions)")
async def completions(
    body: CompletionRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse | StreamingResponse:
    record = await jobs.submit_text(svc, body.to_job(), tenant, JobKind.completion,
                                    [body.text()], overrides=body.sampling_overrides())
    created = int(record.created_at)
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        offset = len(body.text()) if body.logprobs is not None else None
        stream = _stream(svc, record, tenant, created, usage, offset,
                         body.text() if body.echo else "")
        return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
    done = await wait_unless_disconnected(request, svc, record, tenant)
    if done is None:
        return JSONResponse({}, status_code=499)  # nobody is listening any more
    record, output = done
    if record.status is JobStatus.failed:
        raise JobFailed(record.id, record.error)
    logprobs = None
    if body.logprobs is not None:
        logprobs = legacy_logprobs(await _answer_logprobs(svc, record), len(body.text()))
    text = body.text() + output if body.echo else output
    choice = _choice(text, openai_finish(record), logprobs)
    return JSONResponse({**_body(record, created, [choice]), "usage": _usage(record)})


async def _stream(  # noqa: PLR0917 (the stream's whole context)
    svc: Services, record: JobRecord, tenant: str, created: int, usage: bool,
    offset: int | None, echo: str
) -> AsyncIterator[str]:
    """``text_completion`` chunks: ``echo`` (the prompt, when asked), the job's tokens
    (with their logprobs when asked: ``offset`` is where the answer starts), one with
    the finish reason, the usage chunk (``choices: []``) when asked, then ``[DONE]``."""
    finished = False
    try:
        if echo:
            yield _data(_body(record, created, [_choice(echo, None)]))
        async for event in jobs.iterate_events(svc, record, join_tokens=True):
            if isinstance(event, TokenEvent):
                logprobs = None
                if offset is not None:
                    logprobs = legacy_logprobs(event.logprobs or [], offset)
                    offset += len(event.text)
                yield _data(_body(record, created, [_choice(event.text, None, logprobs)]))
            elif isinstance(event, KeepaliveEvent):
                yield KEEPALIVE
        finished = True
        final, _ = await jobs.final(svc, record.id, tenant)
        if final.status is JobStatus.failed:
            yield _data(openai_body(JobFailed(final.id, final.error)))
        else:
            yield _data(_body(final, created, [_choice("", openai_finish(final))]))
            if usage:
                yield _data({**_body(final, created, []), "usage": _usage(final)})
        yield "data: [DONE]\n\n"
    finally:
        if not finished:  # the client went away mid-answer: stop generating for nobody
            with anyio.CancelScope(shield=True):
                await jobs.cancel(svc, record)
