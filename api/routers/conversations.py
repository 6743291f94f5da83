"""``/v1/conversations``: read, list and delete the tenant's stored conversations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field

from api import conversations
from api.deps import ServicesDep, TenantDep
from shared.errors import NotFound
from shared.schemas import ToolCall

router = APIRouter(prefix="/v1/conversations", tags=["conversations"])


class StoredMessage(BaseModel):
    role: str
    content: str
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    job_id: str | None = None
    created_at: datetime | None = None


class ConversationSummary(BaseModel):
    id: str
    object: Literal["conversation"] = "conversation"
    user_id: str | None = None
    persona: dict[str, Any] | None = None
    message_count: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None


class Conversation(ConversationSummary):
    messages: list[StoredMessage] = Field(description="Oldest first.")


class ConversationPage(BaseModel):
    object: Literal["list"] = "list"
    data: list[ConversationSummary] = Field(description="Most recently updated first.")
    next_before: str | None = Field(
        None, description="Pass as `before` for the next page; null on the last page."
    )


@router.get("", response_model=ConversationPage)
async def list_conversations(
    svc: ServicesDep,
    tenant: TenantDep,
    user_id: Annotated[str | None, Query(max_length=128, description="Only this user's.")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size.")] = 20,
    before: Annotated[str | None, Query(
        max_length=256, description="A `next_before` cursor, or an ISO 8601 time: only "
                                    "conversations updated before it.")] = None,
) -> ConversationPage:
    page, cursor = await conversations.store(svc).list(tenant, user_id, limit, before)
    return ConversationPage(data=[ConversationSummary(**c) for c in page], next_before=cursor)


@router.get("/{conversation_id}", response_model=Conversation)
async def get_conversation(conversation_id: str, svc: ServicesDep,
                           tenant: TenantDep) -> Conversation:
    found = await conversations.store(svc).get(conversation_id, tenant)
    if found is None:
        raise NotFound(f"no conversation {conversation_id!r}")
    return Conversation(**found)


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(conversation_id: str, svc: ServicesDep,
                              tenant: TenantDep) -> Response:
    if not await conversations.store(svc).delete(conversation_id, tenant):
        raise NotFound(f"no conversation {conversation_id!r}")
    await conversations.announce_deleted(svc, tenant, conversation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
