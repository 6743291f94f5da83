"""``POST /invocations``: the platform path, with the same modes as ``POST /v1/jobs``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import KeyWebhookDep, ServicesDep, TenantDep
from api.job_responses import RESPONSES, IdempotencyKeyHeader, PreferHeader, submit_response
from shared.schemas import Job, JobRequest

router = APIRouter(tags=["platform"])


@router.post("/invocations", response_model=Job, status_code=202, responses=RESPONSES)
async def invocations(
    body: JobRequest, svc: ServicesDep, tenant: TenantDep, *, key_webhook: KeyWebhookDep,
    prefer: PreferHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    """The same job submit as `POST /v1/jobs` (webhooks, priority, `cancel_after`,
    `Idempotency-Key` included)."""
    return await submit_response(svc, body, tenant, prefer, idempotency_key,
                                 key_webhook=key_webhook)
