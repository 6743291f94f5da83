"""OpenAI's wire format, in one place for every OpenAI route (chat completions, legacy
completions, embeddings, and the surfaces to come).

What must hold on these routes:

- A blocking call waits for its job; if the client goes away first, the job is
  cancelled and nobody is answered (``499``): generating for nobody would hold a
  slot (:func:`respond`). If the wait (:func:`wait_limit_s`) passes first, the job
  is cancelled and the call fails ``timeout`` (``504``): never a half answer (or an
  empty one, for a job still queued) reported as complete.
- A stream (``stream: true``) is ``data:`` frames ending with ``data: [DONE]``; a
  client that goes away before the end cancels its job (:func:`stream_response`).
- A failed job is an OpenAI error object: the status its error code maps to on a
  blocking call (:class:`shared.errors.JobFailed`), an error frame in a stream.
- ``usage`` is the job's (zeros while it has none); finish reasons are OpenAI's
  names for chatq's (:func:`finish_reason`).

A route only builds its own objects (``chat.completion.chunk``, ``text_completion``,
a list of embeddings) with :func:`envelope` and the helpers here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from api import jobs
from api.errors import openai_body
from api.services import Services
from api.sse import KEEPALIVE, SSE_HEADERS, data
from shared.errors import JobFailed
from shared.events import KeepaliveEvent, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus

DONE = "data: [DONE]\n\n"
CLIENT_GONE = 499  # nginx's code for a client that closed the request: nobody reads it

# chatq's finish reasons as OpenAI names them (a cancelled job stopped).
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "stop"}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


def include_usage(options: StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


def finish_reason(record: JobRecord) -> str:
    """The job's finish reason as OpenAI names it."""
    return FINISH_REASONS.get(record.finish_reason or "stop", "stop")


def usage(record: JobRecord) -> dict[str, Any]:
    """OpenAI's usage; ``prompt_tokens_details.cached_tokens``: prompt tokens the worker's
    prompt cache held (0 for an engine without one)."""
    found = dict(record.usage or {"prompt_tokens": 0, "completion_tokens": 0,
                                  "total_tokens": 0})
    found.setdefault("prompt_tokens_details", {"cached_tokens": 0})
    return found


def envelope(record: JobRecord, created: int, kind: str,
             choices: list[dict[str, Any]]) -> dict[str, Any]:
    """The object every completion answer and chunk shares (``kind``: its ``object``)."""
    return {"id": record.id, "object": kind, "created": created, "model": record.model,
            "system_fingerprint": None, "choices": choices}


def usage_chunk(record: JobRecord, created: int, kind: str) -> str:
    """The stream's last chunk when ``include_usage`` is asked: no choices, the usage."""
    return data({**envelope(record, created, kind, []), "usage": usage(record)})


def wait_limit_s(svc: Services) -> float:
    """How long a blocking call waits for its job (queue wait included)."""
    return float(svc.settings.celery.hard_time_limit_s + 60)


async def wait_unless_disconnected(
    request: Request, svc: Services, record: JobRecord, tenant: str
) -> tuple[JobRecord, str] | None:
    """Wait for the job; cancel it (and return None) if the client disconnects first."""
    timeout = wait_limit_s(svc)
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


Answer = Callable[[JobRecord, str], Awaitable[dict[str, Any]]]


def page(objects: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """OpenAI's cursor page of ``objects`` (``/v1/files``, ``/v1/batches``)."""
    return {"object": "list", "data": objects,
            "first_id": objects[0]["id"] if objects else None,
            "last_id": objects[-1]["id"] if objects else None, "has_more": more}


@dataclass(frozen=True)
class BatchRoute:
    """How the Batch API runs a line of an OpenAI route, as the route itself would:
    ``request`` is the route's body model (its ``to_work()`` the route's work), and
    ``answer(svc, body, job, output)`` the route's answer for a finished job. Each
    route module defines one; ``api.main`` hands them to the batches (no router
    imports another)."""

    url: str
    request: type[BaseModel]
    answer: Callable[[Services, Any, JobRecord, str], Awaitable[dict[str, Any]]]


async def respond(request: Request, svc: Services, record: JobRecord, tenant: str,
                  answer: Answer) -> JSONResponse:
    """A blocking call's answer: ``answer(job, output)`` once the job has ended, an
    error when it failed, ``499`` when the client went away first (the job cancelled)."""
    done = await wait_unless_disconnected(request, svc, record, tenant)
    if done is None:
        return JSONResponse({}, status_code=CLIENT_GONE)
    record, output = done
    if not record.status.terminal:  # the wait passed: no half answer as a success
        await jobs.cancel(svc, record)
        raise JobFailed(record.id, {"code": "timeout", "message": (
            f"the job did not finish within the {wait_limit_s(svc):g} s a blocking call "
            "waits (it was still queued or running); it was cancelled")})
    if record.status is JobStatus.failed:
        raise JobFailed(record.id, record.error)
    return JSONResponse(await answer(record, output))


def stream_response(svc: Services, record: JobRecord, lines: AsyncIterator[str],
                    closed: Callable[[], Awaitable[None]] | None = None) -> StreamingResponse:
    """``lines`` as an event stream; a client that leaves before they end cancels the job.
    ``closed()`` runs once the stream is over, whether it ended or its client left."""
    return StreamingResponse(_cancel_if_left(svc, record, lines, closed),
                             media_type="text/event-stream", headers=SSE_HEADERS)


async def _cancel_if_left(
    svc: Services, record: JobRecord, lines: AsyncIterator[str],
    closed: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    finished = False
    try:
        async for line in lines:
            yield line
        finished = True
    finally:
        with anyio.CancelScope(shield=True):
            if not finished:  # the client went away mid-answer: stop generating for nobody
                await jobs.cancel(svc, record)
            if closed is not None:
                await closed()


async def tokens(svc: Services, record: JobRecord) -> AsyncIterator[TokenEvent | str]:
    """The job's tokens (each run that arrived together as one event) until it ends,
    and :data:`KEEPALIVE` comments (to send as they are) while it is idle."""
    async for event in jobs.iterate_events(svc, record, join_tokens=True):
        if isinstance(event, TokenEvent):
            yield event
        elif isinstance(event, KeepaliveEvent):
            yield KEEPALIVE


async def ending(svc: Services, record: JobRecord, tenant: str,
                 closing: Callable[[JobRecord, str], Iterable[str]]) -> AsyncIterator[str]:
    """A stream's end: ``closing(job, output)`` (its last chunks) or, for a failed job,
    the error object; then ``[DONE]``."""
    final, output = await jobs.final(svc, record.id, tenant)
    if final.status is JobStatus.failed:
        yield data(openai_body(JobFailed(final.id, final.error)))
    else:
        for line in closing(final, output):
            yield line
    yield DONE
