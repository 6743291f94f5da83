"""``/v1/jobs``: submit a chat job, read it back."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api import jobs
from api.deps import ServicesDep, TenantDep
from shared.schemas import Job, JobRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=Job)
async def create_job(
    body: JobRequest, svc: ServicesDep, tenant: TenantDep, response: Response
) -> Job:
    record = await jobs.submit(svc, body, tenant)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    response.headers["Retry-After"] = "1"
    response.headers["Preference-Applied"] = "respond-async"
    return await jobs.view(svc, record, "")


@router.get("/{job_id}", response_model=Job)
async def get_job(job_id: str, svc: ServicesDep, tenant: TenantDep) -> Job:
    record, output = await jobs.fetch(svc, job_id, tenant)
    return await jobs.view(svc, record, output)
