"""``GET /metrics``: Prometheus exposition.

It names every queue, model and worker, so it is an operator view: in production
(or wherever admin keys are set) it needs an admin key (``CHATQ_API__ADMIN_KEYS``,
sent as ``Authorization: Bearer``; Prometheus's ``authorization`` scrape option);
a tenant's key gets ``403``. Development with no admin keys serves it to anyone."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from api import queues, telemetry
from api.deps import ServicesDep, get_services
from shared.errors import Forbidden, Unavailable
from shared.settings import Environment

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


def require_operator(request: Request) -> None:
    svc = get_services(request)
    settings = svc.settings
    if settings.env is Environment.development and settings.api.admin_keys is None:
        return
    if not svc.api_keys.caller(request.headers.get("Authorization")).admin:
        raise Forbidden("/metrics needs an admin key (CHATQ_API__ADMIN_KEYS)")


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(require_operator)])
async def prometheus_metrics(request: Request, svc: ServicesDep) -> Response:
    try:
        views = await queues.overview(svc)
        raw = await svc.redis.hgetall(svc.keys.batch_stats())
        stats = {str(k): str(v) for k, v in raw.items()}
        collector = telemetry.QueueCollector(views, batch_stats=stats)
    except (Unavailable, RedisError) as exc:  # still serve the HTTP metrics, and say Redis is down
        log.warning("metrics without queue data", extra={"error": str(exc)})
        collector = telemetry.QueueCollector([], redis_up=False)
    return Response(telemetry.render(request.app, collector, svc.hub),
                    media_type=CONTENT_TYPE_LATEST)
