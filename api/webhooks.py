"""The API's side of webhooks: checking a target at submit, the tenant's secret, and
a job's deliveries for its view. Delivery itself is the webhook worker's
(``workers.webhooks``); the rules are :mod:`shared.webhooks`'."""

from __future__ import annotations

import time

from redis.exceptions import RedisError

from api.services import Services
from shared import webhooks
from shared.errors import Unavailable
from shared.schemas import WebhookDelivery
from shared.webhooks import LUA_DIR, deliveries, new_secret, registration


async def check_target(svc: Services, url: str) -> None:
    """422 (naming ``webhook``) for a target chatq must not call (see
    :func:`shared.webhooks.check_target`)."""
    await webhooks.check_target(url, svc.webhook_policy)


async def tenant_secret(svc: Services, tenant: str) -> str:
    """The tenant's signing secret, made once (SET NX) and kept in Redis."""
    key = svc.keys.webhook_secret(tenant)
    try:
        await svc.redis.set(key, new_secret(), nx=True)
        secret = await svc.redis.get(key)
    except RedisError as exc:
        raise Unavailable("Redis is unreachable") from exc
    return str(secret)


async def job_deliveries(svc: Services, job_id: str) -> list[WebhookDelivery]:
    state: dict[str, str] = await svc.redis.hgetall(svc.keys.hooks(job_id))  # type: ignore[assignment]
    return deliveries(state)


async def register_event(svc: Services, owner_id: str, tenant: str, url: str,  # noqa: PLR0917
                         event: str, body: str) -> bool:
    """A delivery of ``event`` (a batch's end) to ``url``, signed with the tenant's secret
    and sent by the webhook worker like a job's (``register.lua``: once per owner and
    event)."""
    await tenant_secret(svc, tenant)
    keys, args = registration(svc.keys, svc.settings.webhooks, svc.settings.jobs.retention_s,
                              owner_id, tenant, url, event, body, time.time())
    script = svc.redis.register_script((LUA_DIR / "register.lua").read_text())
    return bool(await script(keys=list(keys), args=list(args)))
