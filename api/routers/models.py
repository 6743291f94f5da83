"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's format, with chatq's extras.

Beside OpenAI's ``id``, ``object``, ``created`` and ``owned_by``, each model says
its queue, context size (``null`` for a model served by an upstream: its server
knows), slots, whether it is the default, and how many live
workers serve it (``live_workers``; ``ready`` is true when one does). Those two
are ``null`` when Redis cannot be asked: the list itself needs only the registry.
An unknown id answers ``404`` in OpenAI's error object, naming the known models.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends

from api.deps import ServicesDep, get_tenant
from api.services import Services
from shared.errors import Unavailable, UnknownModel
from shared.registry import ModelSpec

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(get_tenant)])


async def _workers_per_queue(svc: Services) -> Counter[str] | None:
    try:
        return Counter(w.get("queue", "") for w in await svc.live_workers())
    except Unavailable:
        return None


def _model(svc: Services, spec: ModelSpec, live: Counter[str] | None) -> dict[str, Any]:
    workers = None if live is None else live[spec.queue]
    return {
        "id": spec.name,
        "object": "model",
        "created": 0,
        "owned_by": "chatq",
        "queue": spec.queue,
        "context_size": None if spec.upstream else spec.context_size,  # its server's
        "slots": spec.slots,
        "default": spec.name == svc.registry.default_name,
        "live_workers": workers,
        "ready": None if workers is None else workers > 0,
    }


@router.get("", summary="List the models (OpenAI format, with queue and live workers)")
async def list_models(svc: ServicesDep) -> dict[str, Any]:
    live = await _workers_per_queue(svc)
    return {"object": "list",
            "data": [_model(svc, spec, live) for spec in svc.registry.models.values()]}


@router.get("/{model_id:path}", summary="One model (OpenAI's retrieve)")
async def retrieve_model(model_id: str, svc: ServicesDep) -> dict[str, Any]:
    spec = svc.registry.models.get(model_id)  # exactly: an empty id is not the default
    if spec is None:
        known = svc.registry.names
        raise UnknownModel(f"The model {model_id!r} does not exist; known models: "
                           f"{', '.join(known)}", details={"models": known})
    return _model(svc, spec, await _workers_per_queue(svc))
