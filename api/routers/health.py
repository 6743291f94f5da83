"""Liveness (``/healthz``) and readiness (``/readyz``): no key needed."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from shared.errors import ChatqError

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz(svc: ServicesDep) -> dict[str, Any]:
    """The process is up; also how many event-stream clients it is serving."""
    return {"status": "ok", "stream_subscribers": svc.hub.subscriber_count}


async def _check_redis(svc: ServicesDep) -> str | None:
    try:
        await svc.redis.ping()
    except Exception as exc:
        return f"Redis unreachable: {exc}"
    return None


async def _check_mongo(svc: ServicesDep) -> str | None:
    try:
        await svc.mongo.admin.command("ping")
    except Exception as exc:
        return f"MongoDB unreachable: {type(exc).__name__}"
    return None


async def _missing_workers(svc: ServicesDep) -> list[str]:
    try:
        live = {w.get("queue") for w in await svc.live_workers()}
    except ChatqError:
        return []  # Redis is down: already reported
    return [q for q in svc.registry.queues if q not in live]


@router.get("/readyz")
async def readyz(svc: ServicesDep) -> JSONResponse:
    timeout = svc.settings.api.readiness_timeout_s
    checks: dict[str, Any] = {}
    with anyio.move_on_after(timeout * 2):
        checks["redis"] = await _check_redis(svc)
        checks["mongodb"] = await _check_mongo(svc)
        checks["workers"] = await _missing_workers(svc)
    missing = []
    for name in ("redis", "mongodb"):
        problem = checks.get(name, f"{name} check timed out")
        if problem:
            missing.append({"component": name, "reason": problem})
    missing += [
        {"component": f"worker:{q}", "reason": f"no live worker on queue {q!r}"}
        for q in checks.get("workers", svc.registry.queues)
    ]
    if missing:
        message = "not ready: " + "; ".join(m["reason"] for m in missing)
        body = {"status": "unavailable",
                "error": {"code": "not_ready", "message": message, "details": missing}}
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "queues": svc.registry.queues})
