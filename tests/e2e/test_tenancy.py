"""Two tenants (and an operator) on one stack, through the HTTP API: names are the
tenant's own (conversation ids, the ancestor routes' ``db_id``), and ``/v1/queues``
shows a tenant only its own jobs and nothing of the machines; the operator all."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import LONG, hi, submit, wait_done

KEYS = "key-alpha=alpha,key-beta=beta"
ADMIN = "key-operator-0123456789"


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("tenancy"), "stack")
    stack.env["CHATQ_API__KEYS"] = KEYS
    stack.env["CHATQ_API__ADMIN_KEYS"] = ADMIN
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


def cpu_queue(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/v1/queues")
    assert response.status_code == 200, response.text
    [cpu] = [q for q in response.json()["data"] if q["queue"] == "cpu"]
    return cpu


def test_queues_show_a_tenant_its_own_jobs_and_counts_for_the_rest(
        two: Chatq, alpha: httpx.Client, beta: httpx.Client) -> None:
    # Greedy counting to 1,500 tokens: still running whatever the machine, until cancelled.
    job = submit(alpha, hi(LONG, max_tokens=1500, temperature=0))
    with two.client(key=ADMIN) as operator:
        try:
            deadline = time.monotonic() + 120
            while not any(job["id"] in w["running"] for w in cpu_queue(operator)["workers"]):
                assert time.monotonic() < deadline, "the job never showed as running"
                time.sleep(0.1)
            full, mine, theirs = cpu_queue(operator), cpu_queue(alpha), cpu_queue(beta)
        finally:
            alpha.post(f"/v1/jobs/{job['id']}/cancel")
        wait_done(alpha, job["id"])
    beat = two.heartbeat()
    [worker] = full["workers"]
    assert (worker["hostname"], worker["pid"]) == (beat["hostname"], int(beat["pid"]))
    assert worker["worker_id"] == beat["worker_id"]
    for view in (mine, theirs):  # counts for everyone
        assert view["running"] == 1 and view["live_workers"] == 1
        assert view["slots_busy"] >= 1 and view["model"] == "smollm2-135m"
        [shown] = view["workers"]
        assert not {"worker_id", "hostname", "pid", "upstream"} & set(shown)
        assert shown["model"] == "smollm2-135m" and shown["slots"] == worker["slots"]
    assert mine["workers"][0]["running"] == [job["id"]]
    assert theirs["workers"][0]["running"] == []
    assert job["id"] not in str(theirs) and beat["hostname"] not in str(theirs)


def test_queues_need_a_key(two: Chatq) -> None:
    with two.client(key=None) as anonymous, two.client(key="key-nobody") as stranger:
        assert anonymous.get("/v1/queues").status_code == 401
        assert stranger.get("/v1/queues").status_code == 401


def test_metrics_need_the_admin_key_once_one_is_set(
        two: Chatq, alpha: httpx.Client) -> None:
    assert alpha.get("/metrics").status_code == 403
    assert "admin key" in alpha.get("/metrics").json()["error"]["message"]
    with two.client(key=ADMIN) as operator:
        response = operator.get("/metrics")
    assert response.status_code == 200 and "chatq_workers_live" in response.text


def test_usage_adds_up_to_the_jobs_own_and_is_the_tenants_own(
    alpha: httpx.Client, beta: httpx.Client,
) -> None:
    before = alpha.get("/v1/usage").json()["totals"]
    theirs_before = beta.get("/v1/usage").json()["totals"]
    jobs = [submit(alpha, hi(f"Count to {n}.", max_tokens=6)) for n in (2, 3, 4)]
    done = [wait_done(alpha, j["id"]) for j in jobs]
    usage = alpha.get("/v1/usage", params={"days": 1}).json()
    totals = usage["totals"]
    assert usage["tenant"] == "alpha" and usage["data"][0]["model"] == done[0]["model"]
    assert totals["requests"] - before["requests"] == 3
    for what in ("prompt_tokens", "completion_tokens"):
        assert totals[what] - before[what] == sum(j["usage"][what] for j in done)
    assert beta.get("/v1/usage").json()["totals"] == theirs_before  # beta's own only
    assert alpha.get("/v1/usage", params={"days": 0}).status_code == 422
