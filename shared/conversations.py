"""Conversations in MongoDB: one document per conversation, one per message.

Messages live in their own collection so a long chat never grows one document
without bound. Layout::

    conversations  {_id: '["tenant","conversation id"]', conversation_id, tenant,
                    user_id, persona, created_at, updated_at, message_count}
        index (tenant, user_id, updated_at desc, conversation_id desc)  a user's recent ones
        index (tenant, updated_at desc, conversation_id desc)   a tenant's recent ones
    messages       {_id: "{conversation}:{job}:{index}", conversation_id, tenant, seq,
                    role, content, [tool_calls], [tool_call_id], job_id, created_at}
        index (tenant, conversation_id, seq)              a conversation's messages in order

Conversation ids are names in the tenant's own namespace: the document's ``_id``
is the pair (tenant, id) (:func:`conversation_key`), so another tenant using the
same id (a ``conversation_id``, an ancestor route's ``db_id``) gets a conversation
of its own, and nothing a tenant does tells it whether another tenant has one.
Every read and write names the tenant; no query finds a conversation by its id
alone. Documents of the earlier layout (``_id`` = the bare id) are moved to the
keyed one when the API starts (:meth:`ConversationStore.ensure_indexes`).

Appends are idempotent: a message's ``_id`` is derived from the conversation,
the job and the message's place in the job, and it is written with
``$setOnInsert``; ``seq`` comes from the job's submit time, so writing one job's
turn twice (a redelivered job, a retried outbox entry) leaves one copy in the
same place.

:class:`ConversationStore` is the API's side (PyMongo's ``AsyncMongoClient``);
:class:`WorkerConversationStore` the worker's (PyMongo's blocking client, in
the Celery task and the outbox drainer thread). Both share the layout above.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient, IndexModel, MongoClient, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from shared.errors import InvalidRequest, Unavailable

CONVERSATIONS = "conversations"
MESSAGES = "messages"

CONVERSATION_INDEXES = [
    IndexModel([("tenant", 1), ("user_id", 1), ("updated_at", -1), ("conversation_id", -1)],
               name="tenant_user_updated"),
    IndexModel([("tenant", 1), ("updated_at", -1), ("conversation_id", -1)],
               name="tenant_updated"),
]
MESSAGE_INDEXES = [IndexModel([("tenant", 1), ("conversation_id", 1), ("seq", 1)],
                              name="tenant_conversation_order")]

# seq = submit time in ms << 20 | index within the job: time order, then message order
# (up to a million messages per job; still well inside a signed 64-bit integer).
_SEQ_SHIFT = 20
_INDEX_MASK = (1 << _SEQ_SHIFT) - 1


def turn_seq(at: float) -> int:
    """The ``seq`` of the first message of a job submitted at ``at`` (unix s)."""
    return int(at * 1000) << _SEQ_SHIFT


# A message's tool fields, stored only when present: an assistant turn's calls
# (OpenAI's shape) and the call a tool message answers.
TOOL_FIELDS = ("tool_calls", "tool_call_id")


def tool_fields(message: dict[str, Any]) -> dict[str, Any]:
    return {k: message[k] for k in TOOL_FIELDS if message.get(k) is not None}


def new_conversation_id() -> str:
    return "conv_" + secrets.token_urlsafe(16)


def conversation_key(tenant: str, conversation_id: str) -> str:
    """A conversation document's ``_id``: the tenant and the id as a JSON pair, which
    no two different pairs share whatever characters either holds."""
    return json.dumps([tenant, conversation_id], separators=(",", ":"))


def conversation_filter(tenant: str, conversation_id: str) -> dict[str, str]:
    """The one way to find a conversation: by the tenant's key (the tenant and the id
    also as fields, which an upsert copies into a new document)."""
    return {"_id": conversation_key(tenant, conversation_id), "tenant": tenant,
            "conversation_id": conversation_id}


@dataclass
class TurnWrite:
    """One job's contribution to a conversation: what the worker persists (or
    parks in the Redis outbox while MongoDB is down). Plain JSON."""

    conversation_id: str
    tenant: str
    job_id: str
    at: float  # the job's submit time (unix s): orders the turn, the same on every retry
    messages: list[dict[str, Any]]  # the request's user/assistant/tool turns, then the answer
    user_id: str | None = None
    persona: dict[str, Any] | None = None
    written_at: float = field(default=0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> TurnWrite:
        return cls(**json.loads(raw))

    def message_docs(self) -> list[dict[str, Any]]:
        base = turn_seq(self.at)
        created = datetime.fromtimestamp(self.written_at or self.at, UTC)
        return [
            {"_id": f"{self.conversation_id}:{self.job_id}:{i}",
             "conversation_id": self.conversation_id, "tenant": self.tenant, "seq": base + i,
             "role": m["role"], "content": m["content"], **tool_fields(m),
             "job_id": self.job_id, "created_at": created}
            for i, m in enumerate(self.messages)
        ]

    def conversation_update(self) -> dict[str, Any]:
        now = datetime.fromtimestamp(self.written_at or self.at, UTC)
        # A turn that names the user or the persona sets it (latest wins); one that
        # does not leaves the conversation's as it was.
        latest = {name: value for name, value in
                  (("user_id", self.user_id), ("persona", self.persona)) if value is not None}
        update: dict[str, Any] = {
            "$setOnInsert": {"created_at": now,
                             **({} if self.user_id is not None else {"user_id": None})},
            "$max": {"updated_at": now},
        }
        if latest:
            update["$set"] = latest
        return update


# --- API side (async) ----------------------------------------------------------


def _summary(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": doc["conversation_id"], "object": "conversation", "user_id": doc.get("user_id"),
        "persona": doc.get("persona"), "message_count": doc.get("message_count", 0),
        "created_at": doc.get("created_at"), "updated_at": doc.get("updated_at"),
    }


def encode_cursor(doc: dict[str, Any]) -> str:
    updated: datetime = doc["updated_at"]
    raw = json.dumps([int(updated.timestamp() * 1000), doc["conversation_id"]])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def before_filter(before: str) -> dict[str, Any]:
    """``before`` is a ``next_before`` cursor from an earlier page or an ISO 8601 time."""
    try:
        at = datetime.fromisoformat(before)
    except ValueError:
        pass
    else:
        return {"updated_at": {"$lt": at if at.tzinfo else at.replace(tzinfo=UTC)}}
    try:
        padded = before + "=" * (-len(before) % 4)
        ms, last_id = json.loads(base64.urlsafe_b64decode(padded))
        at = datetime.fromtimestamp(int(ms) / 1000, UTC)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("before: not a cursor or an ISO 8601 time",
                             details=[{"field": "before", "message": str(exc)}]) from exc
    return {"$or": [{"updated_at": {"$lt": at}},
                    {"updated_at": at, "conversation_id": {"$lt": str(last_id)}}]}


class ConversationStore:
    """Reading and deleting conversations for the API, always scoped to a tenant."""

    def __init__(self, client: AsyncMongoClient[Any], database: str) -> None:
        db = client[database]
        self.conversations = db[CONVERSATIONS]
        self.messages = db[MESSAGES]

    async def ensure_indexes(self) -> None:
        """Move documents of the earlier layout to the keyed one, then create the
        indexes (idempotent: existing ones are left as they are)."""
        try:
            await self._rekey_legacy()
            await self.conversations.create_indexes(CONVERSATION_INDEXES)
            await self.messages.create_indexes(MESSAGE_INDEXES)
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc

    async def _rekey_legacy(self) -> None:
        """A conversation stored as ``_id`` = its bare id gets the tenant's key (a copy
        under the new ``_id`` first, then the old document goes: safe to repeat)."""
        legacy = self.conversations.find({"conversation_id": {"$exists": False}})
        async for doc in legacy:
            old = doc.pop("_id")
            key = conversation_filter(str(doc["tenant"]), str(old))
            await self.conversations.replace_one({"_id": key["_id"]}, {**doc, **key},
                                                 upsert=True)
            await self.conversations.delete_one({"_id": old})

    async def get(self, conversation_id: str, tenant: str) -> dict[str, Any] | None:
        try:
            doc = await self.conversations.find_one(conversation_filter(tenant, conversation_id))
            if doc is None:
                return None
            cursor = self.messages.find({"conversation_id": conversation_id, "tenant": tenant})
            messages = await cursor.sort("seq", 1).to_list(None)
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc
        return {
            **_summary(doc),
            "messages": [
                {"role": m["role"], "content": m["content"], **tool_fields(m),
                 "job_id": m.get("job_id"), "created_at": m.get("created_at")}
                for m in messages
            ],
        }

    async def turns_before(self, conversation_id: str, tenant: str,
                           at: float) -> list[dict[str, Any]]:
        """The conversation's messages stored by jobs submitted before ``at`` (unix s),
        in order, each with its ``job_id`` and its place in that job's turn (``index``)."""
        query = {"conversation_id": conversation_id, "tenant": tenant,
                 "seq": {"$lt": turn_seq(at)}}
        try:
            docs = await self.messages.find(query).sort("seq", 1).to_list(None)
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc
        return [{"role": m["role"], "content": m["content"], **tool_fields(m),
                 "job_id": m.get("job_id"), "index": int(m["seq"]) & _INDEX_MASK}
                for m in docs]

    async def latest_job(self, conversation_id: str, tenant: str) -> str | None:
        """The job whose turn the conversation stored last (None: nothing stored)."""
        try:
            doc = await self.messages.find_one(
                {"conversation_id": conversation_id, "tenant": tenant}, sort=[("seq", -1)])
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc
        return None if doc is None else doc.get("job_id")

    async def list(self, tenant: str, user_id: str | None, limit: int,
                   before: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the tenant's (or one user's) conversations, newest first, and the
        cursor of the next page (None on the last one)."""
        query: dict[str, Any] = {"tenant": tenant}
        if user_id is not None:
            query["user_id"] = user_id
        if before:
            query.update(before_filter(before))
        try:
            cursor = self.conversations.find(query).sort([("updated_at", -1), ("_id", -1)])
            docs = await cursor.limit(limit + 1).to_list(None)
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc
        page = docs[:limit]
        more = len(docs) > limit
        return [_summary(d) for d in page], encode_cursor(page[-1]) if more else None

    async def delete(self, conversation_id: str, tenant: str) -> bool:
        """Remove the conversation and its messages; False when it is not the tenant's."""
        try:
            doc = await self.conversations.find_one_and_delete(
                conversation_filter(tenant, conversation_id))
            if doc is None:
                return False
            await self.messages.delete_many({"conversation_id": conversation_id,
                                             "tenant": tenant})
        except PyMongoError as exc:
            raise Unavailable(f"MongoDB is unreachable ({type(exc).__name__})") from exc
        return True


# --- worker side (blocking) ------------------------------------------------------


class WorkerConversationStore:
    """History and appends for the worker. PyMongo errors propagate: the caller
    decides (a job goes on without history; a write goes to the outbox)."""

    def __init__(self, client: MongoClient[Any], database: str) -> None:
        db = client[database]
        self.conversations = db[CONVERSATIONS]
        self.messages = db[MESSAGES]

    def ensure_indexes(self) -> None:
        self.conversations.create_indexes(CONVERSATION_INDEXES)
        self.messages.create_indexes(MESSAGE_INDEXES)

    def load(self, conversation_id: str, tenant: str, exclude_job: str,
             limit: int) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The conversation's stored persona and its newest ``limit`` messages in order,
        leaving out the turn of ``exclude_job`` (a redelivered job that already wrote)."""
        doc = self.conversations.find_one(conversation_filter(tenant, conversation_id))
        if doc is None:
            return None, []
        query = {"conversation_id": conversation_id, "tenant": tenant,
                 "job_id": {"$ne": exclude_job}}
        newest = list(self.messages.find(query).sort("seq", -1).limit(limit))
        history = [{"role": m["role"], "content": m["content"], **tool_fields(m)}
                   for m in reversed(newest)]
        return doc.get("persona"), history

    def append(self, write: TurnWrite) -> None:
        """Write one job's turn exactly once, however often it is called."""
        filt = conversation_filter(write.tenant, write.conversation_id)
        try:
            self.conversations.update_one(filt, write.conversation_update(), upsert=True)
        except DuplicateKeyError:
            # Two first writes raced: the second upsert now matches the first's document.
            self.conversations.update_one(filt, write.conversation_update(), upsert=True)
        ops = []
        for doc in write.message_docs():
            key = {"_id": doc.pop("_id")}  # _id goes in the filter, not in $setOnInsert
            ops.append(UpdateOne(key, {"$setOnInsert": doc}, upsert=True))
        if ops:
            self.messages.bulk_write(ops, ordered=True)
        count = self.messages.count_documents({"conversation_id": write.conversation_id,
                                               "tenant": write.tenant})
        self.conversations.update_one(filt, {"$set": {"message_count": count}})
