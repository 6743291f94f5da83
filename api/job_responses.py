"""The job-shaped answer of ``POST /v1/jobs``, ``/invocations`` and the job reads: the
RFC 7240 modes (``Prefer: respond-async`` / ``wait=N``), ``Location`` and
``Retry-After`` while the job is not finished, ``Idempotent-Replayed`` on a repeat.

Shared by the routers that answer with a job, so that none imports another.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Header
from fastapi.responses import JSONResponse

from api import jobs
from api.admission import Work, admit
from api.idempotency import KEY_MAX
from api.modes import Preference, preference
from api.services import Services
from shared.lifecycle import JobRecord
from shared.schemas import Job, JobRequest, WebhookEvent

PreferHeader = Annotated[
    str | None,
    Header(description="RFC 7240: `respond-async`, or `wait=N` to hold up to N seconds."),
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key", min_length=1, max_length=KEY_MAX,
           description="Makes the submit safe to retry: the same key (per tenant, within "
                       "24 h) returns the job the first request made, `200` or `202` as its "
                       "state says, with `Idempotent-Replayed: true`, and queues nothing "
                       "new; the same key with a different body answers `409`."),
]
RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Job, "description": "The finished job (wait mode)."},
    202: {"model": Job, "description": "Accepted; poll `Location`."},
}


async def job_response(
    svc: Services, record: JobRecord, tenant: str, pref: Preference, output: str = "",
    *, accepted: bool = True,
) -> JSONResponse:
    """The job, after waiting as preferred. ``accepted`` (a submit or a cancel): 200 when
    it is finished, else 202 with ``Location`` and ``Retry-After``; otherwise (a read) 200."""
    if pref.wait_s > 0 and not record.status.terminal:
        record, output = await jobs.wait_terminal(svc, record.id, tenant, pref.wait_s)
    job = await jobs.view(svc, record, output)
    headers = {"Preference-Applied": pref.applied} if pref.applied else {}
    pending = accepted and not record.status.terminal
    if pending:
        headers |= {"Location": f"/v1/jobs/{record.id}", "Retry-After": "1"}
    return JSONResponse(job.model_dump(mode="json"), headers=headers,
                        status_code=202 if pending else 200)


async def submit_response(
    svc: Services, body: JobRequest, tenant: str, prefer: str | None,
    idempotency_key: str | None = None, *, key_webhook: str | None = None,
) -> JSONResponse:
    """Admit a chat job and answer as ``Prefer`` asks. A job naming no ``webhook`` gets
    ``key_webhook`` (its key's default), called when it ends (``completed``)."""
    pref = preference(prefer, svc.settings.api)
    work = Work.chat(body, idempotency_key)
    if work.webhook is None and key_webhook is not None:
        work = replace(work, webhook=key_webhook, webhook_events=[WebhookEvent.completed])
    admitted = await admit(svc, work, tenant)
    response = await job_response(svc, admitted.record, tenant, pref, admitted.output)
    if admitted.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response
