"""``GET /v1/queues``: per queue its model, depth, running jobs, live workers and recent
wait / latency / tokens-per-second percentiles and success rate (an operator endpoint)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from api import queues
from api.deps import ServicesDep, get_tenant
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


def _info(view: queues.QueueView) -> QueueInfo:
    totals: dict[str, int] = {}
    for (_, status), n in view.counters.jobs.items():
        totals[status] = totals.get(status, 0) + n
    totals["tokens_generated"] = sum(view.counters.tokens.values())
    return QueueInfo(
        queue=view.queue, model=view.model, depth=view.depth, running=view.running,
        slots=view.slots, slots_busy=view.slots_busy,
        live_workers=len(view.workers), workers=[queues.worker_summary(w) for w in view.workers],
        totals=totals, recent=RecentStats.model_validate(summarize(view.recent)),
    )


@router.get("", response_model=QueueList, dependencies=[Depends(get_tenant)])
async def list_queues(
    svc: ServicesDep,
    window: int = Query(RECENT_MAX, ge=1, le=RECENT_MAX,
                        description="How many of the newest finished jobs the stats cover."),
) -> QueueList:
    return QueueList(data=[_info(v) for v in await queues.overview(svc, window)])
