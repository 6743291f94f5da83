"""Two tenants on one stack, through the HTTP API: names are the tenant's own
(conversation ids, the ancestor routes' ``db_id``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import hi, submit, wait_done

KEYS = "key-alpha=alpha,key-beta=beta"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("tenancy"), "stack")
    stack.env["CHATQ_API__KEYS"] = KEYS
    try:
        yield start_chatq(stack)
    finally:
        stack.stop()


@pytest.fixture
def alpha(two: Chatq) -> Iterator[httpx.Client]:
    with two.client(key="key-alpha", timeout=120) as c:
        yield c


@pytest.fixture
def beta(two: Chatq) -> Iterator[httpx.Client]:
    with two.client(key="key-beta", timeout=120) as c:
        yield c


def office(client: httpx.Client, text: str, db_id: Any, user: str) -> None:
    """One turn on the office route, waited for to the end (the route answers 202 with
    the job when its wait passes first, as on a busy machine)."""
    response = client.post("/office/Llama", json={"input_data": text, "db_id": db_id,
                                                  "user_id": user})
    assert response.status_code in (200, 202), response.text
    if response.status_code == 202:
        assert wait_done(client, response.json()["id"], timeout=300)["status"] == "succeeded"


def stored(client: httpx.Client, conversation_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/conversations/{conversation_id}")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def test_the_same_db_id_is_a_conversation_of_each_tenant(
        alpha: httpx.Client, beta: httpx.Client) -> None:
    """The probe of the issue: beta's ``db_id`` 1002 first, then alpha's 1002 answers
    (it was a 404), and each tenant sees only its own turns under that id."""
    office(beta, "Beta here.", 1002, "u-beta")
    office(alpha, "Alpha here.", 1002, "u-alpha")
    office(beta, "Beta again.", 1002, "u-beta")
    mine, theirs = stored(alpha, "1002"), stored(beta, "1002")
    assert [m["content"] for m in mine["messages"][::2]] == ["Alpha here."]
    assert [m["content"] for m in theirs["messages"][::2]] == ["Beta here.", "Beta again."]
    assert (mine["user_id"], theirs["user_id"]) == ("u-alpha", "u-beta")
    listed = alpha.get("/v1/conversations", params={"user_id": "u-beta"}).json()["data"]
    assert listed == []  # nothing of beta's shows, not even under beta's user id


def test_a_job_continues_its_own_tenants_conversation(
        alpha: httpx.Client, beta: httpx.Client) -> None:
    first = wait_done(alpha, submit(alpha, hi("My name is Ada.", max_tokens=8,
                                              conversation_id="notes"))["id"])
    assert first["status"] == "succeeded" and first["conversation_id"] == "notes"
    other = wait_done(beta, submit(beta, hi("My name is Bob.", max_tokens=8,
                                            conversation_id="notes"))["id"])
    assert other["status"] == "succeeded" and other["conversation_id"] == "notes"
    # beta's turn did not land in alpha's conversation, nor did it read alpha's history
    assert other["history_messages"] == 0
    assert [m["content"] for m in stored(alpha, "notes")["messages"][::2]] == [
        "My name is Ada."]
    assert [m["content"] for m in stored(beta, "notes")["messages"][::2]] == [
        "My name is Bob."]
    # deleting is the tenant's own too: beta's delete leaves alpha's conversation
    assert beta.delete("/v1/conversations/notes").status_code == 204
    assert beta.get("/v1/conversations/notes").status_code == 404
    assert stored(alpha, "notes")["message_count"] == 2
    assert beta.delete("/v1/conversations/notes").status_code == 404

