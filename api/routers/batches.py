"""``/v1/batches`` in OpenAI's wire format: create, retrieve, list, cancel. A batch runs
its input file's lines as chatq jobs at ``batch`` priority (:mod:`api.batches`,
:mod:`api.batch_feeder`); creating one checks the request and queues nothing until
every line has been validated. ``webhook`` (chatq's, in ``extra_body`` of the SDK)
names where ``batch.completed`` / ``failed`` / ``cancelled`` / ``expired`` go; a batch
naming none gets its key's default webhook, if the key has one (``api.deps``)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api import budgets, webhooks
from api import openai_wire as wire
from api.batches import FINAL, BatchStore, batch_object, new_batch_id
from api.deps import KeyWebhookDep, ServicesDep, TenantDep
from api.services import Services
from shared.errors import Conflict, InvalidRequest
from shared.schemas import WEBHOOK_URL_MAX, check_webhook_url

router = APIRouter(prefix="/v1/batches", tags=["batch"])

OPENAI_ENDPOINTS = ("/v1/responses", "/v1/moderations", "/v1/images/generations",
                    "/v1/images/edits", "/v1/videos")


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=30 * 86400, description="1 hour to 30 days.")


class BatchRequest(BaseModel):
    """OpenAI's ``CreateBatchRequest``, and chatq's ``webhook``."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str
    endpoint: str = Field(description="`/v1/chat/completions`, `/v1/completions` or "
                                      "`/v1/embeddings`.")
    completion_window: str = Field(description="`24h`.")
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = None
    webhook: str | None = Field(None, max_length=WEBHOOK_URL_MAX,
                                description="chatq: a URL that gets the batch's end "
                                "(`batch.completed`...), signed as job webhooks are. None: "
                                "the key's default webhook, if it has one.")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        return None if value is None else check_webhook_url(value)


def store(svc: Services) -> BatchStore:
    return BatchStore(svc.mongo, svc.settings.mongo_db)


def _check(body: BatchRequest, svc: Services, routes: dict[str, Any]) -> None:
    if body.endpoint not in routes:
        why = ("is not served by chatq" if body.endpoint in OPENAI_ENDPOINTS
               else "is not a batch endpoint")
        raise InvalidRequest.of_field("endpoint", f"{body.endpoint!r} {why}; use one of "
                                      f"{', '.join(sorted(routes))}")
    if body.completion_window != "24h":
        raise InvalidRequest.of_field("completion_window", "only `24h` is supported")
    budgets.check_metadata(body.metadata, svc.settings.limits)


@router.post("", summary="Create a batch (OpenAI Batch API)")
async def create_batch(body: BatchRequest, request: Request, svc: ServicesDep,
                       tenant: TenantDep, key_webhook: KeyWebhookDep) -> JSONResponse:
    _check(body, svc, request.app.state.batch_routes)
    source = await svc.files.get(tenant, body.input_file_id)
    if (source.get("metadata") or {}).get("purpose") != "batch":
        raise InvalidRequest.of_field("input_file_id", "the file's purpose is not `batch`")
    webhook = body.webhook or key_webhook
    if webhook is not None:
        await webhooks.check_target(svc, webhook)
    now = time.time()
    doc = {"_id": new_batch_id(), "tenant": tenant, "endpoint": body.endpoint,
           "input_file_id": body.input_file_id, "completion_window": "24h",
           "status": "validating", "created_at": now,
           "expires_at": now + svc.settings.batches.window_s, "metadata": body.metadata,
           "webhook": webhook,
           "output_expires_after_s": (body.output_expires_after.seconds
                                      if body.output_expires_after
                                      else svc.settings.batches.output_expires_after_s),
           "counts": {"total": 0, "completed": 0, "failed": 0}, "errors": None,
           "lease_until": 0, "fed_at": 0}
    await store(svc).batches.insert_one(doc)
    return JSONResponse(batch_object(doc))


@router.get("/{batch_id}", summary="A batch")
async def get_batch(batch_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    return JSONResponse(batch_object(await store(svc).get(tenant, batch_id)))


@router.get("", summary="The caller's batches, newest first")
async def list_batches(
    svc: ServicesDep, tenant: TenantDep, after: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JSONResponse:
    docs, more = await store(svc).page(tenant, after, limit)
    return JSONResponse(wire.page([batch_object(d) for d in docs], more))


@router.post("/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """Queued lines never run, running ones stop; the batch ends ``cancelled`` with what
    it finished in its output file (the rest in its error file, ``batch_cancelled``)."""
    batches = store(svc)
    doc = await batches.get(tenant, batch_id)
    if doc["status"] in ("cancelling", "cancelled"):
        return JSONResponse(batch_object(doc))
    moved = await batches.move(batch_id, ("validating", "in_progress"), "cancelling",
                               ending="cancelled")
    if moved is None:
        doc = await batches.get(tenant, batch_id)
        if doc["status"] in FINAL:
            raise Conflict(f"batch {batch_id} has already ended ({doc['status']})",
                           details={"status": doc["status"]})
        return JSONResponse(batch_object(doc))
    return JSONResponse(batch_object(moved))
