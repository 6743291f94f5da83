"""FastAPI dependency aliases, in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import Caller, bearer
from api.services import Services
from shared.errors import Forbidden, Unauthorized
from shared.keystore import KEY_PREFIX
from shared.settings import Settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def _stored_tenant(svc: Services, authorization: str | None, refused: Unauthorized) -> str:
    """The tenant of a key kept in MongoDB (made with the admin API or ``ops.keys``)."""
    key = bearer(authorization)
    if key is None or not key.startswith(KEY_PREFIX):
        raise refused
    tenant = await svc.key_cache.tenant(key)
    if tenant is None:
        raise refused
    return tenant


async def get_tenant(request: Request) -> str:
    """The caller's tenant, from its API key (401 when missing, unknown or revoked)."""
    svc = get_services(request)
    authorization = request.headers.get("Authorization")
    try:
        return svc.api_keys.tenant(authorization)
    except Unauthorized as refused:
        return await _stored_tenant(svc, authorization, refused)


TenantDep = Annotated[str, Depends(get_tenant)]


async def get_key_webhook(request: Request) -> str | None:
    """The default webhook of the caller's key, for a batch or job that names none: a
    key kept in MongoDB may have one (``PUT /v1/admin/keys/{id}/webhook``); a key of
    the settings has none. Use after :data:`TenantDep` (which refuses a bad key)."""
    key = bearer(request.headers.get("Authorization"))
    if key is None or not key.startswith(KEY_PREFIX):
        return None
    stored = await get_services(request).key_cache.stored(key)
    return stored.webhook if stored is not None else None


KeyWebhookDep = Annotated[str | None, Depends(get_key_webhook)]


async def get_caller(request: Request) -> Caller:
    """The caller of an operator view: a tenant, or an operator (an admin key)."""
    svc = get_services(request)
    authorization = request.headers.get("Authorization")
    try:
        return svc.api_keys.caller(authorization)
    except Unauthorized as refused:
        return Caller(await _stored_tenant(svc, authorization, refused), admin=False)


def require_admin(request: Request) -> None:
    """Only an operator's key (``CHATQ_API__ADMIN_KEYS``), never the development key."""
    if not get_services(request).api_keys.is_admin(request.headers.get("Authorization")):
        raise Forbidden("an admin key (CHATQ_API__ADMIN_KEYS) is needed here")


CallerDep = Annotated[Caller, Depends(get_caller)]
