"""``GET /v1/models`` in OpenAI's list format, with chatq's extras."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from api.deps import ServicesDep, get_tenant

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", dependencies=[Depends(get_tenant)])
async def list_models(svc: ServicesDep) -> dict[str, Any]:
    registry = svc.registry
    return {
        "object": "list",
        "data": [
            {
                "id": spec.name,
                "object": "model",
                "created": 0,
                "owned_by": "chatq",
                "queue": spec.queue,
                "context_size": spec.context_size,
                "default": spec.name == registry.default_name,
            }
            for spec in registry.models.values()
        ],
    }
