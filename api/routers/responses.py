"""``/v1/responses``: OpenAI's Responses API on chatq's jobs and conversations.

A response is a chat job (``resp_`` id for ``job_``; see :mod:`shared.responses`),
admitted by ``admit()`` like every other (the request's mapping: :mod:`api.responses`).
A foreground response answers when it ends, and a client that goes away first
cancels it; a ``background`` one answers at once (``queued``), runs whether anyone
watches or not, and is polled, cancelled or streamed (resumably, from any
``sequence_number``) by its id. Errors use OpenAI's error object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api import jobs, response_events
from api import openai_wire as wire
from api import responses as mapping
from api.admission import admit
from api.deps import ServicesDep, TenantDep
from api.services import Services
from api.sse import SSE_HEADERS
from shared import responses
from shared.errors import ChatqError, Conflict, InvalidRequest
from shared.lifecycle import JobRecord

router = APIRouter(prefix="/v1/responses", tags=["openai"])

CANCEL_WAIT_S = 5.0  # how long cancel waits for a running response to stop


@router.post("", response_model=None)
async def create_response(body: mapping.ResponseRequest, request: Request, svc: ServicesDep,
                          tenant: TenantDep) -> JSONResponse | StreamingResponse:
    """Create a response (``stream``, ``background``, ``previous_response_id``...)."""
    try:
        work = await mapping.to_work(svc, body, tenant)
        record = (await admit(svc, work, tenant)).record
    except ChatqError as exc:
        raise mapping.renamed(exc) from None
    if body.stream:
        events = response_events.stream(svc, record, tenant)
        if body.background:  # runs whether the client stays or not (and is stored)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        return wire.stream_response(svc, record, events, lambda: _forget(svc, record))
    if body.background:
        return JSONResponse(responses.response_object(record, ""))

    async def answer(final: JobRecord, output: str) -> dict[str, Any]:
        return responses.response_object(final, output)

    try:
        return await wire.respond(request, svc, record, tenant, answer)
    finally:
        await _forget(svc, record)


async def _forget(svc: Services, record: JobRecord) -> None:
    """A ``store: false`` response is deleted once it has ended (its client gone or
    answered; a cancelled one is waited for up to ``CANCEL_WAIT_S``)."""
    if (record.response or {}).get("store", True):
        return
    with anyio.CancelScope(shield=True):
        final, _ = await jobs.wait_terminal(svc, record.id, record.tenant, CANCEL_WAIT_S)
        await svc.jobs(svc.jobs.ops.delete(final))


@router.get("/{response_id}", response_model=None)
async def get_response(
    response_id: str, svc: ServicesDep, tenant: TenantDep, *,
    stream: Annotated[bool, Query(description="Stream its events (resumable).")] = False,
    starting_after: Annotated[int | None, Query(
        ge=0, description="With stream: the events after this sequence number.")] = None,
    include: Annotated[list[str] | None, Query(alias="include[]")] = None,
) -> JSONResponse | StreamingResponse:
    """The response; with ``stream=true`` its events from the start (or after
    ``starting_after``), until it ends. A stream that leaves cancels nothing."""
    if include:
        raise InvalidRequest.of_field("include", "chatq has no extra output to include")
    if starting_after is not None and not stream:
        raise InvalidRequest.of_field("starting_after", "only with stream=true")
    record, output = await mapping.fetch(svc, response_id, tenant)
    if stream:
        after = -1 if starting_after is None else starting_after
        return StreamingResponse(response_events.stream(svc, record, tenant, after),
                                 media_type="text/event-stream", headers=SSE_HEADERS)
    return JSONResponse(responses.response_object(record, output))


@router.post("/{response_id}/cancel")
async def cancel_response(response_id: str, svc: ServicesDep,
                          tenant: TenantDep) -> JSONResponse:
    """Cancel a background response: queued, it never runs; running, it stops within
    about a token. A finished one answers 409."""
    record, _ = await mapping.fetch(svc, response_id, tenant)
    if not (record.response or {}).get("background"):
        raise InvalidRequest.of_field("response_id", "only a background response can be "
                                                     "cancelled")
    result = await jobs.cancel(svc, record)
    if not result.changed:
        raise Conflict(f"response {response_id} has already ended "
                       f"({responses.status(record)})")
    record, output = await jobs.wait_terminal(svc, record.id, tenant, CANCEL_WAIT_S)
    return JSONResponse(responses.response_object(record, output))


@router.delete("/{response_id}")
async def delete_response(response_id: str, svc: ServicesDep,
                          tenant: TenantDep) -> JSONResponse:
    """Delete a finished response (its conversation's stored turns stay: delete the
    conversation through ``/v1/conversations``). One still running answers 409."""
    record, _ = await mapping.fetch(svc, response_id, tenant)
    verdict = await svc.jobs(svc.jobs.ops.delete(record))
    if verdict == "running":
        raise Conflict(f"response {response_id} is still {responses.status(record)}: "
                       "cancel it first")
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.get("/{response_id}/input_items")
async def list_input_items(
    response_id: str, svc: ServicesDep, tenant: TenantDep, *,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
    before: str | None = None,
    include: Annotated[list[str] | None, Query(alias="include[]")] = None,
) -> JSONResponse:
    """The items the response's model read: the stored conversation before it, then
    its own input (``instructions`` are not items), newest first unless ``order=asc``."""
    if include:
        raise InvalidRequest.of_field("include", "chatq has no extra output to include")
    record, _ = await mapping.fetch(svc, response_id, tenant)
    items = await mapping.input_items(svc, record)
    ids = {item["id"] for item in items}
    for name, value in (("after", after), ("before", before)):
        if value is not None and value not in ids:
            raise InvalidRequest.of_field(name, f"no input item {value!r} in this response")
    return JSONResponse(responses.page(items, order, limit, after, before))
