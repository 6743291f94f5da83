"""``GET /v1/jobs/{id}/events``: the job's tokens as Server-Sent Events, resumable.

    id: 7            event: status            event: done
    event: token     data: {"status": ...}    data: {final job}
    data: {"seq": 7, "text": "..."}

A stream opened late, after the job finished, or with ``Last-Event-ID: k``
yields every token after ``k`` exactly once, in order, then ``done`` (or
``error`` when the job failed), and ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.services import Services
from api.sse import KEEPALIVE, SSE_HEADERS, frame
from shared.errors import InvalidRequest
from shared.events import DoneEvent, ErrorEvent, KeepaliveEvent, StatusEvent, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["streaming"])

def _last_seq(header: str | None, query: int | None) -> int:
    if header is None:
        return query or 0
    try:
        value = int(header)
    except ValueError:
        value = -1
    if value < 0:
        raise InvalidRequest("Last-Event-ID must be a token sequence number (an integer >= 0)",
                             details=[{"field": "Last-Event-ID", "message": "not an integer"}])
    return value


@router.get("/{job_id}/events", response_class=StreamingResponse)
async def job_events(
    job_id: str,
    svc: ServicesDep,
    tenant: TenantDep,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="Resume after this seq.")] = None,
) -> StreamingResponse:
    record, _ = await jobs.fetch(svc, job_id, tenant)  # 404 / 410 before the stream opens
    stream = job_event_stream(svc, record, tenant, _last_seq(last_event_id, after))
    return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)


async def job_event_stream(
    svc: Services, record: JobRecord, tenant: str, last_seq: int
) -> AsyncIterator[str]:
    async for event in jobs.iterate_events(svc, record, last_seq):
        if isinstance(event, TokenEvent):
            yield frame("token", event.model_dump(exclude={"type"}, exclude_none=True),
                        event.seq)
        elif isinstance(event, KeepaliveEvent):
            yield KEEPALIVE
        elif isinstance(event, StatusEvent):
            yield frame("status", event.model_dump(mode="json", exclude={"type"},
                                                   exclude_none=True))
    yield await _final(svc, record.id, tenant)


async def _final(svc: Services, job_id: str, tenant: str) -> str:
    record, output = await jobs.final(svc, job_id, tenant)
    job = (await jobs.view(svc, record, output)).model_dump(mode="json")
    end = (ErrorEvent(error=record.error, job=job) if record.status is JobStatus.failed
           else DoneEvent(job=job))
    return frame(end.type, end.sse_data())
