"""FastAPI dependency aliases, in one place."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from api.auth import Caller
from api.services import Services
from shared.settings import Settings


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


ServicesDep = Annotated[Services, Depends(get_services)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_tenant(request: Request) -> str:
    """The caller's tenant, from its API key (401 when missing or unknown)."""
    return get_services(request).api_keys.tenant(request.headers.get("Authorization"))


TenantDep = Annotated[str, Depends(get_tenant)]


def get_caller(request: Request) -> Caller:
    """The caller of an operator view: a tenant, or an operator (an admin key)."""
    return get_services(request).api_keys.caller(request.headers.get("Authorization"))


CallerDep = Annotated[Caller, Depends(get_caller)]
