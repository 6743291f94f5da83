"""The conversation store against a real MongoDB wire server (embedded, or
CHATQ_TEST_MONGO_URL): idempotent appends, order, tenant isolation, pages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient

from shared.conversations import (
    ConversationStore,
    TurnWrite,
    WorkerConversationStore,
    conversation_filter,
)
from shared.errors import InvalidRequest


@pytest.fixture
def database() -> str:
    return f"chatq_test_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def worker_store(mongo_url: str, database: str) -> Iterator[WorkerConversationStore]:
    client: MongoClient[Any] = MongoClient(mongo_url, serverSelectionTimeoutMS=3000,
                                           tz_aware=True)
    store = WorkerConversationStore(client, database)
    store.ensure_indexes()
    yield store
    client.drop_database(database)
    client.close()


def with_api_store[T](mongo_url: str, database: str,
                      use: Callable[[ConversationStore], Awaitable[T]]) -> T:
    """Run ``use`` with the API's (async) store on a fresh event loop."""

    async def main() -> T:
        client: AsyncMongoClient[Any] = AsyncMongoClient(
            mongo_url, serverSelectionTimeoutMS=3000, tz_aware=True)
        try:
            return await use(ConversationStore(client, database))
        finally:
            await client.close()

    return asyncio.run(main())


def turn(conversation: str, job: str, at: float, text: str, *, tenant: str = "t1",
         user: str | None = "u1", **fields: Any) -> TurnWrite:
    return TurnWrite(conversation_id=conversation, tenant=tenant, job_id=job, at=at,
                     messages=[{"role": "user", "content": text},
                               {"role": "assistant", "content": f"re: {text}"}],
                     user_id=user, written_at=at + 0.5, **fields)


def test_appending_one_jobs_turn_twice_keeps_one_copy(
        worker_store: WorkerConversationStore) -> None:
    write = turn("c1", "job_a", 1000.0, "hello")
    worker_store.append(write)
    worker_store.append(write)  # a redelivered job / a retried outbox entry
    worker_store.append(turn("c1", "job_b", 1001.0, "again"))
    _, history = worker_store.load("c1", "t1", exclude_job="", limit=100)
    assert [m["content"] for m in history] == ["hello", "re: hello", "again", "re: again"]
    doc = worker_store.conversations.find_one(conversation_filter("t1", "c1"))
    assert doc is not None and doc["message_count"] == 4
    assert worker_store.messages.count_documents({"conversation_id": "c1"}) == 4


def test_history_is_in_submit_order_whatever_the_write_order(
        worker_store: WorkerConversationStore) -> None:
    worker_store.append(turn("c1", "job_late", 2000.0, "second"))
    worker_store.append(turn("c1", "job_early", 1000.0, "first"))
    _, history = worker_store.load("c1", "t1", exclude_job="", limit=100)
    assert [m["content"] for m in history] == ["first", "re: first", "second", "re: second"]


def test_load_leaves_out_the_jobs_own_turn_and_keeps_the_newest(
        worker_store: WorkerConversationStore) -> None:
    for i in range(5):
        worker_store.append(turn("c1", f"job_{i}", 1000.0 + i, f"m{i}"))
    _, history = worker_store.load("c1", "t1", exclude_job="job_4", limit=3)
    assert [m["content"] for m in history] == ["re: m2", "m3", "re: m3"]


def test_persona_is_kept_on_the_conversation(worker_store: WorkerConversationStore) -> None:
    persona = {"type": "character", "character_name": "Ada", "greeting": "Hi", "context": ""}
    worker_store.append(turn("c1", "job_a", 1000.0, "hello", persona=persona))
    worker_store.append(turn("c1", "job_b", 1001.0, "again"))  # no persona: kept as it was
    stored, _ = worker_store.load("c1", "t1", exclude_job="", limit=10)
    assert stored == persona


def test_a_later_turn_can_name_the_user(worker_store: WorkerConversationStore) -> None:
    worker_store.append(turn("c1", "job_a", 1000.0, "hello", user=None))
    c1 = conversation_filter("t1", "c1")
    assert (worker_store.conversations.find_one(c1) or {})["user_id"] is None
    worker_store.append(turn("c1", "job_b", 1001.0, "again", user="u9"))
    worker_store.append(turn("c1", "job_c", 1002.0, "more", user=None))
    assert (worker_store.conversations.find_one(c1) or {})["user_id"] == "u9"


def test_a_tenant_sees_only_its_own_conversations(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    worker_store.append(turn("mine", "job_a", 1000.0, "secret", tenant="t1"))
    worker_store.append(turn("theirs", "job_b", 1001.0, "other", tenant="t2", user="u1"))
    assert worker_store.load("mine", "t2", exclude_job="", limit=10) == (None, [])

    async def use(store: ConversationStore) -> None:
        assert await store.get("mine", "t2") is None
        assert (await store.get("mine", "t1") or {})["message_count"] == 2
        page, _ = await store.list("t2", "u1", 10, None)
        assert [c["id"] for c in page] == ["theirs"]
        assert await store.delete("mine", "t2") is False

    with_api_store(mongo_url, database, use)
    assert worker_store.messages.count_documents({"conversation_id": "mine"}) == 2


def test_the_same_id_is_a_conversation_of_each_tenant(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    """Conversation ids are names in the tenant's namespace: t2 writing to t1's id
    starts t2's own conversation; each tenant reads, lists and deletes only its own."""
    worker_store.append(turn("1002", "job_a", 1000.0, "alpha's", tenant="t1"))
    worker_store.append(turn("1002", "job_b", 1001.0, "beta's", tenant="t2"))
    worker_store.append(turn("1002", "job_b", 1001.0, "beta's", tenant="t2"))  # redelivered
    _, history = worker_store.load("1002", "t1", exclude_job="", limit=10)
    assert [m["content"] for m in history] == ["alpha's", "re: alpha's"]
    _, history = worker_store.load("1002", "t2", exclude_job="", limit=10)
    assert [m["content"] for m in history] == ["beta's", "re: beta's"]

    async def use(store: ConversationStore) -> None:
        for tenant in ("t1", "t2"):
            found = await store.get("1002", tenant)
            assert found is not None and found["id"] == "1002" and found["message_count"] == 2
            page, _ = await store.list(tenant, None, 10, None)
            assert [c["id"] for c in page] == ["1002"]
        assert await store.delete("1002", "t2") is True
        assert await store.get("1002", "t2") is None
        assert (await store.get("1002", "t1") or {})["message_count"] == 2

    with_api_store(mongo_url, database, use)
    assert worker_store.messages.count_documents({"conversation_id": "1002"}) == 2


def test_conversations_of_the_earlier_layout_get_the_tenants_key(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    """A document stored as ``_id`` = its bare id is moved to the keyed layout when the
    API starts, and is then found (with its messages) by its own tenant only."""
    worker_store.append(turn("old", "job_a", 1000.0, "kept", tenant="t1"))
    doc = worker_store.conversations.find_one_and_delete(conversation_filter("t1", "old"))
    assert doc is not None
    doc.pop("conversation_id")
    worker_store.conversations.insert_one({**doc, "_id": "old"})

    async def use(store: ConversationStore) -> None:
        await store.ensure_indexes()
        await store.ensure_indexes()  # again: nothing left to move
        found = await store.get("old", "t1")
        assert found is not None and found["message_count"] == 2
        assert [m["content"] for m in found["messages"]] == ["kept", "re: kept"]
        assert await store.get("old", "t2") is None

    with_api_store(mongo_url, database, use)
    assert worker_store.conversations.count_documents({}) == 1


def test_list_pages_newest_first_with_a_cursor(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    for i in range(5):
        worker_store.append(turn(f"c{i}", f"job_{i}", 1000.0 + i, "x"))
    worker_store.append(turn("elsewhere", "job_x", 1010.0, "x", user="u2"))

    async def use(store: ConversationStore) -> None:
        seen: list[str] = []
        before = None
        for expected in (2, 2, 1):
            page, before = await store.list("t1", "u1", 2, before)
            assert len(page) == expected
            seen += [c["id"] for c in page]
        assert before is None
        assert seen == ["c4", "c3", "c2", "c1", "c0"]
        at = datetime.fromtimestamp(1002.2, UTC).isoformat()
        older, _ = await store.list("t1", "u1", 10, at)
        assert [c["id"] for c in older] == ["c1", "c0"]
        everyone, _ = await store.list("t1", None, 10, None)
        assert everyone[0]["id"] == "elsewhere" and len(everyone) == 6
        with pytest.raises(InvalidRequest):
            await store.list("t1", "u1", 2, "not-a-cursor!")

    with_api_store(mongo_url, database, use)


def test_delete_removes_the_conversation_and_its_messages(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    worker_store.append(turn("c1", "job_a", 1000.0, "bye"))

    async def use(store: ConversationStore) -> None:
        assert await store.delete("c1", "t1") is True
        assert await store.get("c1", "t1") is None
        assert await store.delete("c1", "t1") is False

    with_api_store(mongo_url, database, use)
    assert worker_store.messages.count_documents({"conversation_id": "c1"}) == 0


def test_indexes_are_created_idempotently(
        worker_store: WorkerConversationStore, mongo_url: str, database: str) -> None:
    worker_store.ensure_indexes()
    with_api_store(mongo_url, database, lambda store: store.ensure_indexes())
    names = {ix["name"] for ix in worker_store.conversations.list_indexes()}
    assert {"tenant_user_updated", "tenant_updated"} <= names
    assert "tenant_conversation_order" in {
        ix["name"] for ix in worker_store.messages.list_indexes()}


def test_tool_calls_and_results_are_stored_and_loaded(worker_store: WorkerConversationStore,
                                                     mongo_url: str, database: str) -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    first = TurnWrite(conversation_id="c-tools", tenant="t1", job_id="j1", at=1000.0,
                      messages=[{"role": "user", "content": "Weather?"},
                                {"role": "assistant", "content": "", "tool_calls": [call]}])
    second = TurnWrite(conversation_id="c-tools", tenant="t1", job_id="j2", at=1001.0,
                       messages=[{"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
                                 {"role": "assistant", "content": "It is 21 C."}])
    worker_store.append(first)
    worker_store.append(second)
    _, history = worker_store.load("c-tools", "t1", "j3", 10)
    assert history == [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "21 C", "tool_call_id": "call_1"},
        {"role": "assistant", "content": "It is 21 C."},
    ]
    shown = with_api_store(mongo_url, database, lambda s: s.get("c-tools", "t1"))
    assert shown is not None
    assert [m.get("tool_calls") for m in shown["messages"]] == [None, [call], None, None]
    assert shown["messages"][2]["tool_call_id"] == "call_1"
