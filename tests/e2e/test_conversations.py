"""Conversations end to end: HTTP API -> worker with the real model -> MongoDB."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pymongo import MongoClient

from shared.celeryconf import make_celery
from shared.conversations import TurnWrite, WorkerConversationStore
from shared.keys import GENERATE_TASK
from shared.settings import load_settings
from tests.conftest import Chatq
from tests.helpers import as_if_its_worker_died, hi, submit, wait_done


@pytest.fixture
def mongo_store(chatq: Chatq) -> Iterator[WorkerConversationStore]:
    """Direct access to the stack's conversation store (as the worker sees it)."""
    client: MongoClient[Any] = MongoClient(chatq.stack.env["CHATQ_MONGO_URL"],
                                           serverSelectionTimeoutMS=3000, tz_aware=True)
    yield WorkerConversationStore(client, "chatq")
    client.close()


def ask(client: httpx.Client, text: str, **fields: Any) -> dict[str, Any]:
    job = wait_done(client, submit(client, hi(text, max_tokens=12, **fields))["id"])
    assert job["status"] == "succeeded", job
    return job


def messages(client: httpx.Client, conversation_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["messages"]
    return found


def test_three_turns_each_prompt_holds_the_earlier_turns(client: httpx.Client) -> None:
    first = ask(client, "My name is Ada.")
    conversation = first["conversation_id"]
    assert conversation and first["persisted"] is True and first["history_messages"] == 0
    second = ask(client, "I live in Paris.", conversation_id=conversation)
    third = ask(client, "What is my name?", conversation_id=conversation)
    assert second["history_messages"] == 2 and third["history_messages"] == 4
    assert third["history_trimmed"] == 0
    # Turn three's prompt holds turns one and two: it is at least as long as both of them.
    assert (third["usage"]["prompt_tokens"] > second["usage"]["prompt_tokens"]
            > first["usage"]["prompt_tokens"])
    stored = messages(client, conversation)
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "My name is Ada."), ("assistant", first["output"]),
        ("user", "I live in Paris."), ("assistant", second["output"]),
        ("user", "What is my name?"), ("assistant", third["output"]),
    ]
    assert [m["job_id"] for m in stored[::2]] == [first["id"], second["id"], third["id"]]


def test_a_redelivered_job_does_not_duplicate_messages(chatq: Chatq,
                                                       client: httpx.Client) -> None:
    job = ask(client, "Count to three.")
    before = messages(client, job["conversation_id"])
    assert len(before) == 2
    # As if the worker died after writing the turn but before finishing the job:
    # the sweeper requeues it and a worker runs it a second time.
    as_if_its_worker_died(chatq.redis(), job["id"])
    again = wait_done(client, job["id"])
    assert again["status"] == "succeeded" and again["attempts"] == 2
    assert again["history_messages"] == 0  # its own earlier write is not its history
    assert again["persisted"] is True
    assert messages(client, job["conversation_id"]) == before
    # A late message of a finished job is skipped altogether.
    celery = make_celery(load_settings(redis_url=chatq.redis_url))
    try:
        celery.send_task(GENERATE_TASK, args=[job["id"], 2], queue="cpu")
    finally:
        celery.close()
    ask(client, "Flush the queue.")
    assert messages(client, job["conversation_id"]) == before


def test_office_persona_with_reference_data(client: httpx.Client) -> None:
    plain = ask(client, "What was revenue?")
    persona = {"type": "office", "reference_data": "Q3 revenue: 4.2M EUR."}
    job = ask(client, "What was revenue?", persona=persona, user_id="u-office")
    # The persona's system prompt is part of the rendered prompt.
    assert job["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    stored = client.get(f"/v1/conversations/{job['conversation_id']}").json()
    assert stored["persona"] == persona and stored["user_id"] == "u-office"


def test_character_persona_is_kept_for_the_next_turn(client: httpx.Client) -> None:
    persona = {"type": "character", "character_name": "Captain Nemo",
               "greeting": "Welcome aboard the Nautilus.", "context": "A submarine captain."}
    first = ask(client, "Who are you?", persona=persona)
    # The next turn sends no persona: the conversation's stored one is used.
    second = ask(client, "Where are we?", conversation_id=first["conversation_id"])
    without = ask(client, "Where are we?")
    assert second["history_messages"] == 2
    assert second["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 20
    stored = client.get(f"/v1/conversations/{first['conversation_id']}").json()
    assert stored["persona"]["character_name"] == "Captain Nemo"
    assert stored["messages"][0] == {**stored["messages"][0], "role": "user",
                                     "content": "Who are you?"}


def test_bad_persona_names_the_field(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(persona={"type": "pirate"}))
    assert response.status_code == 422
    assert "persona" in response.json()["error"]["message"]
    response = client.post("/v1/jobs", json=hi(persona={"type": "character"}))
    assert response.status_code == 422
    assert "character_name" in response.json()["error"]["message"]


def test_office_ancestor_route_answers_a_json_string(client: httpx.Client) -> None:
    db_id = f"db-{uuid.uuid4().hex[:8]}"
    body = {"input_data": "Hello!", "google_access": False, "db_id": db_id, "user_id": "u7"}
    first = client.post("/office/Llama", json=body, timeout=60)
    assert first.status_code == 200, first.text
    assert isinstance(first.json(), str) and first.json()
    second = client.post("/office/Llama", json={**body, "input_data": "And again?"},
                         timeout=60)
    assert second.status_code == 200, second.text
    stored = client.get(f"/v1/conversations/{db_id}").json()
    assert stored["user_id"] == "u7" and stored["persona"]["type"] == "office"
    assert [m["content"] for m in stored["messages"][::2]] == ["Hello!", "And again?"]
    assert stored["messages"][1]["content"].strip() == first.json()


def test_character_ancestor_route(client: httpx.Client) -> None:
    body = {"input_data": "Hi, who are you?", "character_name": "Sherlock",
            "greeting": "Ah, a visitor.", "context": "A consulting detective in London.",
            "db_id": f"db-{uuid.uuid4().hex[:8]}", "user_id": "u8"}
    response = client.post("/character/Llama", json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert isinstance(response.json(), str) and response.json()
    stored = client.get(f"/v1/conversations/{body['db_id']}").json()
    assert stored["persona"] == {"type": "character", "character_name": "Sherlock",
                                 "greeting": "Ah, a visitor.",
                                 "context": "A consulting detective in London."}
    assert len(stored["messages"]) == 2


@pytest.mark.parametrize("text", ["", "x" * 501])
def test_ancestor_input_data_is_1_to_500_characters(client: httpx.Client, text: str) -> None:
    for path, extra in (("/office/Llama", {}), ("/character/Llama", {"character_name": "A"})):
        response = client.post(path, json={"input_data": text, "db_id": "d", **extra})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "input_data"


def test_ancestor_routes_refuse_a_field_they_do_not_know(client: httpx.Client) -> None:
    for path, extra in (("/office/Llama", {}), ("/character/Llama", {"character_name": "A"})):
        response = client.post(path, json={"input_data": "Hi", "temperature": 0.2, **extra})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "temperature"


def test_list_get_delete_with_pagination(client: httpx.Client) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    ids = [ask(client, f"Note {i}", user_id=user)["conversation_id"] for i in range(3)]
    page = client.get("/v1/conversations", params={"user_id": user, "limit": 2}).json()
    assert [c["id"] for c in page["data"]] == [ids[2], ids[1]]
    assert page["data"][0]["message_count"] == 2 and page["next_before"]
    rest = client.get("/v1/conversations", params={"user_id": user, "limit": 2,
                                                   "before": page["next_before"]}).json()
    assert [c["id"] for c in rest["data"]] == [ids[0]] and rest["next_before"] is None

    assert client.delete(f"/v1/conversations/{ids[1]}").status_code == 204
    assert client.get(f"/v1/conversations/{ids[1]}").status_code == 404
    assert client.delete(f"/v1/conversations/{ids[1]}").status_code == 404
    left = client.get("/v1/conversations", params={"user_id": user}).json()
    assert [c["id"] for c in left["data"]] == [ids[2], ids[0]]


def test_list_validates_its_parameters(client: httpx.Client) -> None:
    assert client.get("/v1/conversations", params={"limit": 0}).status_code == 422
    assert client.get("/v1/conversations", params={"limit": 101}).status_code == 422
    response = client.get("/v1/conversations", params={"before": "garbage!"})
    assert response.status_code == 422
    assert client.get("/v1/conversations/conv_nope").status_code == 404


def test_another_tenants_conversation_is_404_and_its_id_is_free(client: httpx.Client,
                                             mongo_store: WorkerConversationStore) -> None:
    theirs = f"conv-{uuid.uuid4().hex[:8]}"
    mongo_store.append(TurnWrite(
        conversation_id=theirs, tenant="someone-else", job_id="job_x", at=time.time(),
        messages=[{"role": "user", "content": "private"}], user_id="u1"))
    assert client.get(f"/v1/conversations/{theirs}").status_code == 404
    assert client.delete(f"/v1/conversations/{theirs}").status_code == 404
    listed = client.get("/v1/conversations", params={"user_id": "u1"}).json()["data"]
    assert theirs not in [c["id"] for c in listed]
    # The id names a conversation in the caller's own namespace: a job using it starts
    # the caller's conversation, and the other tenant's stays as it was.
    job = ask(client, "Mine now.", conversation_id=theirs, user_id="u1")
    assert job["conversation_id"] == theirs
    assert messages(client, theirs)[0]["content"] == "Mine now."
    assert mongo_store.messages.count_documents({"conversation_id": theirs,
                                                 "tenant": "someone-else"}) == 1
