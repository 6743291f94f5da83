"""The ancestor servers' routes, so their clients keep working unchanged.

``POST /office/Llama`` and ``POST /character/Llama`` take the old bodies and
answer the assistant's text as a JSON string, as before. They go through the
same queues as ``/v1/jobs`` (a job on the model the registry's ``[ancestor]``
table names for the route, else the default model; persona set, ``db_id`` as the
conversation id) and wait for the answer up to
``CHATQ_CONVERSATIONS__ANCESTOR_WAIT_S``. If that passes first they answer
``202`` with the job (``Location: /v1/jobs/{id}``), so nothing is lost.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api import jobs
from api.admission import Work, admit
from api.deps import ServicesDep, TenantDep
from shared.errors import JobCancelled, JobFailed
from shared.personas import CharacterPersona, OfficePersona
from shared.schemas import JobRequest, JobStatus, Message

router = APIRouter(tags=["ancestor"])


class AncestorRequest(BaseModel):
    # The old servers ignored fields they did not know; chatq refuses them (422 naming
    # the field) rather than drop a parameter a caller thinks it set.
    model_config = ConfigDict(extra="forbid")

    input_data: str = Field(min_length=1, max_length=500, description="The user's message.")
    db_id: str | int | None = Field(None, description="Conversation id (new one if absent).")
    user_id: str | int | None = Field(None, description="The end user.")

    def job(self, persona: OfficePersona | CharacterPersona, model: str) -> JobRequest:
        return JobRequest(
            model=model,
            messages=[Message(role="user", content=self.input_data)],
            conversation_id=str(self.db_id) if self.db_id not in (None, "") else None,
            user_id=None if self.user_id is None else str(self.user_id),
            persona=persona,
        )


class OfficeRequest(AncestorRequest):
    google_access: Any = Field(None, description="Accepted for compatibility; not used.")


class CharacterRequest(AncestorRequest):
    character_name: str = Field(min_length=1, max_length=200)
    greeting: str = Field("", max_length=10_000)
    context: str = Field("", max_length=200_000, description="The character sheet.")


async def _answer(svc: ServicesDep, tenant: str, req: JobRequest) -> JSONResponse:
    submitted = (await admit(svc, Work.chat(req), tenant)).record
    record, output = await jobs.wait_terminal(
        svc, submitted.id, tenant, svc.settings.conversations.ancestor_wait_s)
    if record.status is JobStatus.succeeded:
        return JSONResponse(output.strip())
    if not record.status.terminal:
        view = await jobs.view(svc, record, output)
        return JSONResponse(view.model_dump(mode="json"), status.HTTP_202_ACCEPTED,
                            headers={"Location": f"/v1/jobs/{record.id}", "Retry-After": "1"})
    if record.status is JobStatus.failed:
        raise JobFailed(record.id, record.error)
    raise JobCancelled(f"job {record.id} was {record.status.value} before it answered",
                       details={"job_id": record.id})


@router.post("/office/Llama", summary="The ancestor office assistant")
async def office(body: OfficeRequest, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    model = svc.registry.ancestor_model("office").name
    return await _answer(svc, tenant, body.job(OfficePersona(), model))


@router.post("/character/Llama", summary="The ancestor character role-play bot")
async def character(body: CharacterRequest, svc: ServicesDep,
                    tenant: TenantDep) -> JSONResponse:
    persona = CharacterPersona(character_name=body.character_name, greeting=body.greeting,
                               context=body.context)
    model = svc.registry.ancestor_model("character").name
    return await _answer(svc, tenant, body.job(persona, model))
