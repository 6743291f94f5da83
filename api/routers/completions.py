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

from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from api import jobs
from api import openai_wire as wire
from api.admission import Work, admit
from api.deps import ServicesDep, TenantDep
from api.openai_wire import StreamOptions
from api.services import Services
from api.sse import data
from shared.errors import UnsupportedParameter
from shared.events import LogprobEntry
from shared.lifecycle import JobRecord
from shared.schemas import (
    JobKind,
    MaxTokensField,
    SamplingFields,
    SeedField,
    StopField,
    TemperatureField,
    TopPField,
)

router = APIRouter(prefix="/v1", tags=["openai"])
TEXT_COMPLETION = "text_completion"


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
    presence_penalty: StrictFloat | None = Field(
        None, ge=-2, le=2, description="Lowers the logit of every token already generated "
                                       "(recent ones) by this much.")
    frequency_penalty: StrictFloat | None = Field(
        None, ge=-2, le=2, description="Lowers a token's logit by this much per time it "
                                       "was generated (recent ones).")
    logit_bias: dict[str, StrictFloat] | None = Field(
        None, description="Token id (a string of digits) -> bias added to its logit, "
                          "-100 to 100 (-100 bans the token).")
    n: StrictInt = Field(1, description="Only 1: chatq returns one choice.")
    best_of: StrictInt | None = Field(None, description="Only 1 (or absent).")
    echo: bool = Field(False, description="Return the prompt before the completion (not "
                       "with `logprobs`: chatq does not score the prompt).")
    suffix: str | None = Field(None, description="Not supported (insertion): absent or null.")
    logprobs: StrictInt | None = Field(None, ge=0, le=5, description="Log probabilities of "
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
        return SamplingFields.check_stop(value)

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

    def to_work(self) -> Work:
        """The prompt as a job of its own kind (:attr:`JobKind.completion`): fed to the
        model as it is, with this path's sampling fields."""
        problems = self.refused()
        if problems:
            raise UnsupportedParameter.of_fields(problems)
        sampling = {"max_tokens": self.max_tokens, "temperature": self.temperature,
                    "top_p": self.top_p, "stop": self.stop, "seed": self.seed,
                    **self.sampling_overrides()}
        return Work(kind=JobKind.completion, model=self.model, inputs=[self.text()],
                    sampling=sampling, metadata={"user": self.user} if self.user else None)


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


@router.post("/completions", response_model=None,
             summary="Complete a prompt (OpenAI legacy completions)")
async def completions(
    body: CompletionRequest, request: Request, svc: ServicesDep, tenant: TenantDep
) -> JSONResponse | StreamingResponse:
    record = (await admit(svc, body.to_work(), tenant)).record
    created = int(record.created_at)
    if body.stream:
        offset = len(body.text()) if body.logprobs is not None else None
        echo = body.text() if body.echo else ""
        lines = _stream(svc, record, tenant, created, wire.include_usage(body.stream_options),
                        offset, echo)
        return wire.stream_response(svc, record, lines)

    return await wire.respond(request, svc, record, tenant, partial(answer, svc, body))


async def answer(svc: Services, body: CompletionRequest, record: JobRecord,
                 output: str) -> dict[str, Any]:
    """The ``text_completion`` of a finished job."""
    logprobs = None
    if body.logprobs is not None:
        entries = await jobs.answer_logprobs(svc, record) or []
        logprobs = legacy_logprobs(entries, len(body.text()))
    text = body.text() + output if body.echo else output
    choice = _choice(text, wire.finish_reason(record), logprobs)
    return {**wire.envelope(record, int(record.created_at), TEXT_COMPLETION, [choice]),
            "usage": wire.usage(record)}


BATCH = wire.BatchRoute("/v1/completions", CompletionRequest, answer)


async def _stream(  # noqa: PLR0917 (the stream's whole context)
    svc: Services, record: JobRecord, tenant: str, created: int, usage: bool,
    offset: int | None, echo: str
) -> AsyncIterator[str]:
    """``text_completion`` chunks: ``echo`` (the prompt, when asked), the job's tokens
    (with their logprobs when asked: ``offset`` is where the answer starts), one with
    the finish reason, the usage chunk (``choices: []``) when asked, then ``[DONE]``."""
    if echo:
        yield _chunk(record, created, echo)
    async for event in wire.tokens(svc, record):
        if isinstance(event, str):
            yield event
            continue
        logprobs = None
        if offset is not None:
            logprobs = legacy_logprobs(event.logprobs or [], offset)
            offset += len(event.text)
        yield _chunk(record, created, event.text, logprobs=logprobs)

    def closing(final: JobRecord, _: str) -> list[str]:
        lines = [_chunk(final, created, "", wire.finish_reason(final))]
        return [*lines, wire.usage_chunk(final, created, TEXT_COMPLETION)] if usage else lines

    async for line in wire.ending(svc, record, tenant, closing):
        yield line


def _chunk(record: JobRecord, created: int, text: str, finish: str | None = None,
           logprobs: dict[str, Any] | None = None) -> str:
    return data(wire.envelope(record, created, TEXT_COMPLETION,
                              [_choice(text, finish, logprobs)]))
