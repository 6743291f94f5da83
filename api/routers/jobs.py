"""``/v1/jobs``: submit a chat job (async or wait mode), read it, cancel it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse

from api import jobs
from api.deps import ServicesDep, TenantDep
from api.modes import Preference, long_poll, preference
from api.services import Services
from shared.errors import Conflict
from shared.jobstore import JobRecord
from shared.schemas import Job, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

PreferHeader = Annotated[
    str | None,
    Header(description="RFC 7240: `respond-async`, or `wait=N` to hold up to N seconds."),
]
CANCEL_WAIT_S = 5.0  # how long cancel waits for a running job to stop before answering


async def job_response(
    svc: Services, record: JobRecord, tenant: str, pref: Preference, output: str = ""
) -> JSONResponse:
    """200 with the job if it is finished (after waiting as preferred), else 202."""
    if pref.wait_s > 0 and not record.status.terminal:
        record, output = await jobs.wait_terminal(svc, record.id, tenant, pref.wait_s)
    job = await jobs.view(svc, record, output)
    headers = {"Preference-Applied": pref.applied} if pref.applied else {}
    if not record.status.terminal:
        headers |= {"Location": f"/v1/jobs/{record.id}", "Retry-After": "1"}
    return JSONResponse(job.model_dump(mode="json"), headers=headers,
                        status_code=200 if record.status.terminal else 202)


async def submit_response(
    svc: Services, body: JobRequest, tenant: str, prefer: str | None
) -> JSONResponse:
    record = await jobs.submit(svc, body, tenant)
    return await job_response(svc, record, tenant, preference(prefer, svc.settings.api))


RESPONSES: dict[int | str, dict[str, object]] = {
    200: {"model": Job, "description": "The finished job (wait mode)."},
    202: {"model": Job, "description": "Accepted; poll `Location`."},
}


@router.post("", response_model=Job, status_code=202, responses=RESPONSES)
async def create_job(
    body: JobRequest, svc: ServicesDep, tenant: TenantDep, prefer: PreferHeader = None
) -> JSONResponse:
    return await submit_response(svc, body, tenant, prefer)


@router.get("/{job_id}", response_model=Job, responses=RESPONSES)
async def get_job(
    job_id: str, svc: ServicesDep, tenant: TenantDep, prefer: PreferHeader = None
) -> JSONResponse:
    """The job; with `Prefer: wait=N`, held until it is finished or N seconds pass."""
    record, output = await jobs.fetch(svc, job_id, tenant)
    response = await job_response(svc, record, tenant, long_poll(prefer, svc.settings.api),
                                  output)
    response.status_code = 200
    return response


@router.post("/{job_id}/cancel", response_model=Job, responses=RESPONSES)
async def cancel_job(job_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """A queued job never runs; a running one stops within about one token; 409 if finished."""
    record, _ = await jobs.fetch(svc, job_id, tenant)
    changed, status = await svc.store.cancel(record)
    if not changed:
        raise Conflict(f"job {job_id} has already finished ({status})",
                       details={"status": status})
    record, output = await jobs.fetch(svc, job_id, tenant)
    return await job_response(svc, record, tenant, Preference(CANCEL_WAIT_S, None), output)
