"""``/v1/jobs``: submit a chat job (async or wait mode), read it, cancel it."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api import jobs
from api.deps import KeyWebhookDep, ServicesDep, TenantDep
from api.job_responses import (
    RESPONSES,
    IdempotencyKeyHeader,
    PreferHeader,
    job_response,
    submit_response,
)
from api.modes import Preference, long_poll
from shared.errors import Conflict
from shared.schemas import Job, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

CANCEL_WAIT_S = 5.0  # how long cancel waits for a running job to stop before answering


@router.post("", response_model=Job, status_code=202, responses=RESPONSES)
async def create_job(
    body: JobRequest, svc: ServicesDep, tenant: TenantDep, *, key_webhook: KeyWebhookDep,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """Submit a chat job. Optional: `webhook` + `webhook_events` (signed calls when it
    starts / ends), `priority`, `cancel_after` (a deadline), and the `Idempotency-Key`
    header (safe retries)."""
    return await submit_response(svc, body, tenant, prefer, idempotency_key,
                                 key_webhook=key_webhook)


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
