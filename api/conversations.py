"""Conversations on the API side: the tenant's store.

A job needs no ownership check at submit: conversation ids are names in the
tenant's own namespace (``shared/conversations.py``), so a job's
``conversation_id`` always means its own tenant's conversation (a new one when the
tenant has none by that id), whatever other tenants have stored."""

from __future__ import annotations

import json
import logging

import redis.asyncio as aredis

from api.services import Services
from shared.conversations import ConversationStore
from shared.errors import Unavailable

log = logging.getLogger(__name__)


def store(svc: Services) -> ConversationStore:
    return ConversationStore(svc.mongo, svc.settings.mongo_db)


async def announce_deleted(svc: Services, tenant: str, conversation_id: str) -> None:
    """Tell the workers a conversation is gone, so their prompt caches drop it. Best
    effort: with Redis away the entries stay until evicted (they are only ever reused by
    the same tenant's jobs)."""
    message = json.dumps({"tenant": tenant, "conversation_id": conversation_id})
    try:
        await svc.redis.publish(svc.keys.conversation_deletes(), message)
    except aredis.RedisError as exc:
        log.warning("conversation deleted; the workers' prompt caches were not told",
                    extra={"conversation_id": conversation_id, "error": str(exc)})


async def ensure_indexes(svc: Services) -> None:
    """Create the indexes at start-up; MongoDB being down must not stop the API
    (the workers create them too, once it answers)."""
    try:
        await store(svc).ensure_indexes()
    except Unavailable as exc:
        log.warning("conversation indexes not created: MongoDB unreachable",
                    extra={"error": exc.message})
