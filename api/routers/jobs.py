"""``/v1/jobs``: submit a chat job (async or wait mode), read it, cancel it."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.idempotency import KEY_MAX, body_hash
from api.modes import Preference, long_poll, preference
from api.services import Services
from shared.errors import Conflict
from shared.lifecycle import JobRecord
from shared.schemas import Job, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

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
CANCEL_WAIT_S = 5.0  # how long cancel waits for a running job to stop before answering


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
    idempotency_key: str | None = None,
) -> JSONResponse:
    pref = preference(prefer, svc.settings.api)
    if idempotency_key is None:
        return await job_response(svc, await jobs.submit(svc, body, tenant), tenant, pref)
    claim = await svc.idempotency.claim(tenant, idempotency_key, body_hash(body))
    if claim.job_id is not None:
        record, output = await jobs.fetch(svc, claim.job_id, tenant)
        response = await job_response(svc, record, tenant, pref, output)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    try:
        record = await jobs.submit(svc, body, tenant)
    except BaseException:
        with anyio.CancelScope(shield=True):  # also when the client went away
            await svc.idempotency.release(claim)
        raise
    await svc.idempotency.complete(claim, record.id)
    return await job_response(svc, record, tenant, pref)


RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Job, "description": "The finished job (wait mode)."},
    202: {"model": Job, "description": "Accepted; poll `Location`."},
}


@router.post("", response_model=Job, status_code=202, responses=RESPONSES)
async def create_job(
    body: JobRequest, svc: ServicesDep, tenant: TenantDep, prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Submit a chat job. Optional: `webhook` + `webhook_events` (signed calls when it
    starts / ends), `priority`, `cancel_after` (a deadline), and the `Idempotency-Key`
    header (safe retries)."""
    return await submit_response(svc, body, tenant, prefer, idempotency_key)


@router.get("/{job_id}", response_model=Job, responses=RESPONSES)
async def get_job(
    job_id: str, svc: ServicesDep, tenant: TenantDep, prefer: PreferHeader = None
) -> JSONResponse:
    """The job; with `Prefer: wait=N`, held until it is finished or N seconds pass."""
    record, output = await jobs.fetch(svc, job_id, tenant)
    return await job_response(svc, record, tenant, long_poll(prefer, svc.settings.api),
                              output, accepted=False)


@router.post("/{job_id}/cancel", response_model=Job, responses=RESPONSES)
async def cancel_job(job_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """A queued job never runs; a running one stops within about one token; 409 if finished."""
    record, _ = await jobs.fetch(svc, job_id, tenant)
    result = await jobs.cancel(svc, record)
    if not result.changed:
        raise Conflict(f"job {job_id} has already finished ({result.status})",
                       details={"status": result.status})
    record, output = await jobs.fetch(svc, job_id, tenant)
    return await job_response(svc, record, tenant, Preference(CANCEL_WAIT_S, None), output)
