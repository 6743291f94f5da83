"""``GET /metrics``: Prometheus exposition (no key needed; keep it on the internal network)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api import queues, telemetry
from api.deps import ServicesDep
from shared.errors import Unavailable

router = APIRouter(tags=["operations"])
log = logging.getLogger(__name__)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request, svc: ServicesDep) -> Response:
    try:
        collector = telemetry.QueueCollector(await queues.overview(svc))
    except Unavailable as exc:  # still serve the HTTP metrics, and say Redis is down
        log.warning("metrics without queue data", extra={"error": exc.message})
        collector = telemetry.QueueCollector([], redis_up=False)
    return Response(telemetry.render(request.app, collector), media_type=CONTENT_TYPE_LATEST)
