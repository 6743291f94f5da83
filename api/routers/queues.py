"""``GET /v1/queues``: per queue its model, depth, running jobs, live workers and recent
wait / latency / tokens-per-second percentiles and success rate (an operator endpoint).

With an admin key the whole view; with a tenant's key the counts, and of the workers
only the tenant's own running jobs and nothing that names a machine
(:func:`api.queues.for_tenant`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field
from pymongo.errors import PyMongoError

from api import queues
from api.auth import Caller
from api.batches import BatchStore
from api.deps import CallerDep, ServicesDep
from api.services import Services
from shared.opstats import RECENT_MAX, summarize

router = APIRouter(prefix="/v1/queues", tags=["operations"])


class Percentiles(BaseModel):
    p50: float
    p90: float
    p99: float


class RecentStats(BaseModel):
    jobs: int = Field(description="Finished jobs in the window (the newest ones).")
    since: float | None = Field(description="Unix time the oldest of them finished.")
    by_status: dict[str, int]
    success_rate: float | None = Field(
        description="succeeded / (succeeded + failed); cancelled jobs are not failures.")
    queue_wait_ms: Percentiles | None
    ttft_ms: Percentiles | None
    duration_ms: Percentiles | None
    tokens_per_s: Percentiles | None


class QueueInfo(BaseModel):
    queue: str
    model: str | None = Field(description="The registry's model for this queue.")
    depth: int = Field(description="Jobs waiting in the broker.")
    running: int = Field(description="Jobs a worker is running now.")
    slots: int = Field(description="Jobs the live workers can generate at once.")
    slots_busy: int = Field(description="Slots generating a job, as the heartbeats say.")
    live_workers: int
    workers: list[dict[str, Any]]
    totals: dict[str, int] = Field(description="Finished jobs by status since the start, "
                                   "and tokens_generated.")
    recent: RecentStats


class QueueList(BaseModel):
    object: str = "list"
    data: list[QueueInfo]
    batches: dict[str, int] = Field(
        default_factory=dict,
        description="Batches (the Batch API) not yet ended, by status: every tenant's with "
                    "an admin key, the caller's own with a tenant's (empty while MongoDB is "
                    "unreachable).")


def _info(view: queues.QueueView, workers: list[dict[str, Any]]) -> QueueInfo:
    totals: dict[str, int] = {}
    for (_, status), n in view.counters.jobs.items():
        totals[status] = totals.get(status, 0) + n
    totals["tokens_generated"] = sum(view.counters.tokens.values())
    return QueueInfo(
        queue=view.queue, model=view.model, depth=view.depth, running=view.running,
        slots=view.slots, slots_busy=view.slots_busy,
        live_workers=len(view.workers), workers=workers,
        totals=totals, recent=RecentStats.model_validate(summarize(view.recent)),
    )


async def _workers(svc: Services, caller: Caller,
                   views: list[queues.QueueView]) -> list[list[dict[str, Any]]]:
    """Each view's workers as the caller may see them."""
    summaries = [[queues.worker_summary(w) for w in v.workers] for v in views]
    if caller.admin or caller.tenant is None:
        return summaries
    owners = await queues.job_tenants(svc, views)
    return [[queues.for_tenant(w, caller.tenant, owners) for w in ws] for ws in summaries]


@router.get("", response_model=QueueList)
async def list_queues(
    svc: ServicesDep,
    caller: CallerDep,
    window: int = Query(RECENT_MAX, ge=1, le=RECENT_MAX,
                        description="How many of the newest finished jobs the stats cover."),
) -> QueueList:
    views = await queues.overview(svc, window)
    workers = await _workers(svc, caller, views)
    tenant = None if caller.admin else caller.tenant
    return QueueList(data=[_info(v, w) for v, w in zip(views, workers, strict=True)],
                     batches=await batch_counts(svc, tenant))


async def batch_counts(svc: Services, tenant: str | None) -> dict[str, int]:
    """Batches not yet ended, by status (a tenant's own, or all)."""
    try:
        return await BatchStore(svc.mongo, svc.settings.mongo_db).active(tenant)
    except PyMongoError:
        return {}
