"""Conversations on the API side: the tenant's store, and ownership checks at submit."""

from __future__ import annotations

import logging

from api.services import Services
from shared.conversations import ConversationStore
from shared.errors import NotFound, Unavailable

log = logging.getLogger(__name__)


def store(svc: Services) -> ConversationStore:
    return ConversationStore(svc.mongo, svc.settings.mongo_db)


async def ensure_indexes(svc: Services) -> None:
    """Create the indexes at start-up; MongoDB being down must not stop the API
    (the workers create them too, once it answers)."""
    try:
        await store(svc).ensure_indexes()
    except Unavailable as exc:
        log.warning("conversation indexes not created: MongoDB unreachable",
                    extra={"error": exc.message})


async def check_owner(svc: Services, conversation_id: str, tenant: str) -> None:
    """A job may continue only its own tenant's conversation (or start one with a new id).

    With MongoDB down the check is skipped: the job still runs, and the worker
    never reads or writes another tenant's conversation either way.
    """
    try:
        owner = await store(svc).owner(conversation_id)
    except Unavailable:
        log.warning("conversation owner not checked: MongoDB unreachable",
                    extra={"conversation_id": conversation_id})
        return
    if owner is not None and owner != tenant:
        raise NotFound(f"no conversation {conversation_id!r}")
