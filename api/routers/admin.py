"""``/v1/admin``: operators manage API keys, their default webhooks and tenants' rate
limits without a restart.

Every route needs an operator's key (``CHATQ_API__ADMIN_KEYS``); the development key is
never one. Keys are shown once, at creation, and stored only as digests
(``shared/keystore.py``); ``python -m ops.keys`` does the same from a shell.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import webhooks
from api.deps import ServicesDep, require_admin
from shared.errors import NotFound
from shared.keystore import KeyStore
from shared.schemas import WEBHOOK_URL_MAX, check_webhook_url
from shared.settings import RateLimits

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])

TENANT_PATTERN = r"^[A-Za-z0-9_.-]+$"
TENANT = Annotated[str, Field(min_length=1, max_length=64, pattern=TENANT_PATTERN)]
TENANT_PATH = Annotated[str, Path(min_length=1, max_length=64, pattern=TENANT_PATTERN)]


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: TENANT
    name: str = Field("", max_length=128)
    expires_at: int | None = Field(None, description="Unix seconds; none: never expires.")


class KeyWebhook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    webhook: str | None = Field(
        max_length=WEBHOOK_URL_MAX,
        description="The key's default webhook: a batch (its end: `batch.completed`...) "
                    "or a `/v1/jobs` / `/invocations` job (`completed`) made with this key "
                    "and naming no `webhook` is signed and sent there. Checked as a job's "
                    "`webhook` is. `null`: no default.")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook_url(value)


def _store(svc: ServicesDep) -> KeyStore:
    return svc.key_cache.store


@router.post("/keys", status_code=201)
async def create_key(body: NewKey, svc: ServicesDep) -> dict[str, Any]:
    """A new key for a tenant: ``key`` is in this answer only."""
    expires = (datetime.fromtimestamp(body.expires_at, UTC)
               if body.expires_at is not None else None)
    key, stored = await _store(svc).create(body.tenant, body.name, expires)
    return {**stored.view(), "key": key}


@router.get("/keys")
async def list_keys(svc: ServicesDep, tenant: str | None = None) -> dict[str, Any]:
    """Every stored key (or one tenant's), without the keys themselves."""
    return {"object": "list", "data": [k.view() for k in await _store(svc).list(tenant)]}


@router.delete("/keys/{key_id}")
async def revoke_key(key_id: str, svc: ServicesDep) -> dict[str, Any]:
    """Revoke a key (by the id a listing shows): every API process refuses it within
    seconds."""
    stored = await _store(svc).revoke(key_id)
    if stored is None:
        raise NotFound(f"no key {key_id!r}")
    return stored.view()


@router.put("/keys/{key_id}/webhook")
async def set_key_webhook(key_id: str, body: KeyWebhook, svc: ServicesDep) -> dict[str, Any]:
    """The key's default webhook (``null`` removes it): ``422`` naming ``webhook`` for a
    URL a job could not name (its shape, http in production, a private address...)."""
    if body.webhook is not None:
        await webhooks.check_target(svc, body.webhook)
    stored = await _store(svc).set_webhook(key_id, body.webhook)
    if stored is None:
        raise NotFound(f"no key {key_id!r}")
    return stored.view()


@router.put("/tenants/{tenant}/limits")
async def set_limits(tenant: TENANT_PATH, limits: RateLimits, svc: ServicesDep) -> dict[str, Any]:
    """The tenant's rate limits (they override ``CHATQ_API__RATE_LIMITS``)."""
    await _store(svc).set_limits(tenant, limits)
    return {"tenant": tenant, "rate_limits": limits.model_dump(exclude_none=True)}
