"""Async callers end to end (issue 13): signed webhooks with retries, priorities,
``cancel_after`` deadlines, idempotent submits and the webhook SSRF guard, against
a real worker with the demo model, the webhook worker and a real HTTP receiver."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from ops.webhook_receiver import verify
from shared.events import Transition
from shared.keys import Keys
from tests.conftest import Chatq
from tests.helpers import (
    LONG,
    BlackHole,
    Receiver,
    all_slots_busy,
    hi,
    submit,
    wait_done,
    wait_idle,
)


def long_job(max_tokens: int = 1500, **fields: Any) -> dict[str, Any]:
    """A job that generates for a long while (until cancelled, in these tests)."""
    return hi(LONG, max_tokens=max_tokens, temperature=0, **fields)


def get(client: httpx.Client, job_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def transitions(chatq: Chatq, job_id: str) -> list[str]:
    entries = chatq.redis().xrange(Keys().transitions())
    return [t.to for t in (Transition.from_fields(f) for _, f in entries) if t.job_id == job_id]


@pytest.fixture
def busy_worker(client: httpx.Client) -> Iterator[list[str]]:
    """Every slot of the worker busy with a long job, so that new jobs wait in line."""
    wait_idle(client)
    with all_slots_busy(client) as fillers:
        yield fillers


def free_one_slot(client: httpx.Client, fillers: list[str]) -> str:
    """Cancel a long job that is generating (it stops within a token): one slot frees."""
    generating: list[str] = []

    def found() -> bool:
        generating[:] = [f for f in fillers if get(client, f)["output"]]
        return bool(generating)

    wait_until(found, 30, "a long job to generate")
    assert client.post(f"/v1/jobs/{generating[0]}/cancel").status_code in (200, 202)
    return generating[0]


# --- webhooks ----------------------------------------------------------------------------


def test_start_and_completed_webhooks_arrive_in_order_and_signed(
    client: httpx.Client,
) -> None:
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    assert secret.startswith("whsec_")
    assert client.get("/v1/webhooks/secret").json()["secret"] == secret  # made once
    with Receiver() as receiver:
        response = client.post("/v1/jobs", json=long_job(
            40, webhook=receiver.url, webhook_events=["start", "completed"]),
            headers={"Prefer": "respond-async"})
        assert response.status_code == 202, response.text  # http to 127.0.0.1: development
        job_id = response.json()["id"]
        done = wait_done(client, job_id)
        got = receiver.wait(2)
    assert done["status"] == "succeeded"
    assert [r.headers["webhook-id"] for r in got] == [f"msg_{job_id}_start",
                                                       f"msg_{job_id}_completed"]
    assert all(verify(secret, r.headers, r.body) for r in got)
    assert got[0].job["status"] == "running" and got[0].job["id"] == job_id
    final = got[1].job
    assert final["status"] == "succeeded" and final["output"] == done["output"]
    assert final["usage"] == done["usage"] and "webhook_deliveries" not in final

    def both_delivered() -> bool:
        hooks = get(client, job_id)["webhook_deliveries"] or []
        return [(d["event"], d["status"]) for d in hooks] == [
            ("start", "delivered"), ("completed", "delivered")]

    wait_until(both_delivered, 10, "the deliveries to show in the job")
    view = get(client, job_id)
    assert view["webhook"] == receiver.url
    assert view["webhook_events"] == ["start", "completed"]
    assert all(d["attempts"] == 1 and d["last_status"] == 200
               for d in view["webhook_deliveries"])


def test_a_receiver_answering_500_twice_gets_the_delivery_on_the_third_try(
    client: httpx.Client,
) -> None:
    with Receiver([500, 500]) as receiver:
        job = submit(client, hi(max_tokens=4, webhook=receiver.url))  # completed by default
        wait_done(client, job["id"])
        got = receiver.wait(3)
        time.sleep(0.5)
    assert len(receiver.received) == 3
    assert {r.headers["webhook-id"] for r in got} == {f"msg_{job['id']}_completed"}
    secret = client.get("/v1/webhooks/secret").json()["secret"]
    assert all(verify(secret, r.headers, r.body) for r in got)
    assert got[0].at < got[1].at < got[2].at
    wait_until(lambda: (get(client, job["id"])["webhook_deliveries"] or [{}])[0].get(
        "status") == "delivered", 10, "the delivery to settle")
    [delivery] = get(client, job["id"])["webhook_deliveries"]
    assert (delivery["attempts"], delivery["last_status"]) == (3, 200)


def test_a_dead_receiver_does_not_delay_the_next_job(client: httpx.Client) -> None:
    with BlackHole() as hole:
        hooked = submit(client, hi(max_tokens=8, webhook=hole.url,
                                   webhook_events=["start", "completed"]))
        plain = submit(client, hi(max_tokens=8))
        first, second = wait_done(client, hooked["id"]), wait_done(client, plain["id"])
        assert first["status"] == second["status"] == "succeeded"
        # the next job ran at once, while the first one's webhook still hangs
        gap = (datetime.fromisoformat(second["finished_at"])
               - datetime.fromisoformat(first["finished_at"])).total_seconds()
        assert gap < 10
        hooks = get(client, hooked["id"])["webhook_deliveries"]
        assert hooks and all(d["status"] == "pending" for d in hooks)
        assert hooks[0]["event"] == "start"  # completed waits behind it, in order


# --- priority ----------------------------------------------------------------------------


def test_an_interactive_job_starts_before_batch_jobs_already_waiting(
    client: httpx.Client, busy_worker: list[str],
) -> None:
    batch = [submit(client, hi(f"Batch job {i}.", max_tokens=4, priority="batch"))
             for i in range(3)]
    interactive = submit(client, hi("Interactive job.", max_tokens=4))
    assert [b["position"] for b in batch] == [0, 1, 2]  # each was last when it came
    assert interactive["position"] == 0  # ahead of every batch job
    assert [get(client, b["id"])["position"] for b in batch] == [1, 2, 3]
    assert all(b["priority"] == "batch" for b in batch)
    assert interactive["priority"] == "interactive"

    free_one_slot(client, busy_worker)
    wait_until(lambda: get(client, interactive["id"])["status"] != "queued", 30,
               "the interactive job to start")
    assert [get(client, b["id"])["status"] for b in batch] == ["queued"] * 3
    for job_id in busy_worker:
        client.post(f"/v1/jobs/{job_id}/cancel")
    done = [wait_done(client, j["id"]) for j in [interactive, *batch]]
    assert all(j["status"] == "succeeded" for j in done)
    started = [datetime.fromisoformat(j["started_at"]) for j in done]
    assert started[0] < min(started[1:])


# --- cancel_after ------------------------------------------------------------------------


def test_cancel_after_passing_while_queued_ends_it_expired_never_run(
    chatq: Chatq, client: httpx.Client, busy_worker: list[str],
) -> None:
    with Receiver() as receiver:
        job = submit(client, hi(max_tokens=4, cancel_after=1, webhook=receiver.url))
        assert job["status"] == "queued" and job["cancel_at"] is not None
        done = wait_done(client, job["id"], timeout=20)
        [hook] = receiver.wait(1)
    assert done["status"] == "expired" and done["started_at"] is None
    assert done["error"]["code"] == "expired" and done["output"] == ""
    assert transitions(chatq, job["id"]) == ["queued", "expired"]  # never running
    assert hook.job["status"] == "expired"  # `completed` covers expired
    assert (datetime.fromisoformat(done["finished_at"])
            - datetime.fromisoformat(done["created_at"])).total_seconds() < 5


def test_cancel_after_passing_while_running_fails_it_with_timeout_keeping_output(
    chatq: Chatq, client: httpx.Client,
) -> None:
    wait_idle(client)
    deadline = datetime.fromtimestamp(time.time() + 3).astimezone().isoformat()
    job = submit(client, long_job(1500, cancel_after=deadline))  # as an ISO 8601 time
    done = wait_done(client, job["id"])
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "timeout" and "cancel_after" in done["error"]["message"]
    assert done["finish_reason"] == "timeout"
    assert done["output"] and done["usage"]["completion_tokens"] < 1500
    assert "running" in transitions(chatq, job["id"])
    ended = datetime.fromisoformat(done["finished_at"])
    assert abs((ended - datetime.fromisoformat(done["cancel_at"])).total_seconds()) < 2


# --- idempotent submits -------------------------------------------------------------------


def test_the_same_idempotency_key_makes_one_job(client: httpx.Client) -> None:
    key = f"order-{uuid.uuid4()}"
    body = hi(max_tokens=4)
    headers = {"Idempotency-Key": key, "Prefer": "respond-async"}
    first = client.post("/v1/jobs", json=body, headers=headers)
    again = client.post("/v1/jobs", json=body, headers=headers)
    platform = client.post("/invocations", json=body, headers=headers)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    assert again.status_code in (200, 202) and again.headers["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == again.json()["id"] == platform.json()["id"]
    done = wait_done(client, first.json()["id"])
    replay = client.post("/v1/jobs", json=body, headers=headers)
    assert replay.status_code == 200  # finished: 200, as its state says
    assert replay.json()["id"] == done["id"] and replay.json()["status"] == "succeeded"

    other = client.post("/v1/jobs", json=hi("Another question", max_tokens=4), headers=headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_conflict"


def test_concurrent_submits_with_one_key_make_one_job(client: httpx.Client) -> None:
    headers = {"Idempotency-Key": f"race-{uuid.uuid4()}", "Prefer": "respond-async"}
    barrier = threading.Barrier(6)

    def post(_: int) -> str:
        barrier.wait()
        response = client.post("/v1/jobs", json=hi(max_tokens=4), headers=headers)
        assert response.status_code in (200, 202), response.text
        job_id: str = response.json()["id"]
        return job_id

    with ThreadPoolExecutor(6) as pool:
        ids = set(pool.map(post, range(6)))
    assert len(ids) == 1
    wait_done(client, ids.pop())


def test_a_bad_idempotency_key_is_422_naming_the_header(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens=4),
                           headers={"Idempotency-Key": "k" * 300})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["field"] == "Idempotency-Key"


# --- the SSRF guard ----------------------------------------------------------------------


def test_production_refuses_private_webhook_targets_naming_the_field(
    make_stack: Callable[..., Chatq],
) -> None:
    stack = make_stack(with_worker=False, env={"CHATQ_ENV": "production",
                                               "CHATQ_API__KEYS": "prod-key-1=acme"})
    with stack.client(key="prod-key-1") as c:
        for url in ("http://127.0.0.1:8080/hook", "https://127.0.0.1:8080/hook",
                    "https://localhost/hook", "https://[::1]/hook",
                    "https://169.254.169.254/latest/meta-data", "https://10.0.0.8/hook",
                    "https://2130706433/hook", "https://[64:ff9b::7f00:1]/hook",
                    "https://[::ffff:169.254.169.254]/hook"):
            response = c.post("/v1/jobs", json=hi(webhook=url))
            assert response.status_code == 422, (url, response.text)
            error = response.json()["error"]
            assert error["code"] == "unsafe_webhook", url
            assert [d["field"] for d in error["details"]] == ["webhook"]
        assert "https" in c.post("/v1/jobs", json=hi(
            webhook="http://93.184.216.34/hook")).json()["error"]["message"]
        # a public https target passes the guard: the request goes on (to 503: no worker)
        assert c.post("/v1/jobs", json=hi(webhook="https://93.184.216.34/hook")
                      ).status_code == 503
        # NAT64 of a public address reaches a public address
        assert c.post("/v1/jobs", json=hi(webhook="https://[64:ff9b::5db8:d822]/hook")
                      ).status_code == 503
        too_late = c.post("/v1/jobs", json=hi(cancel_after=10 * 86400))
        assert too_late.status_code == 422
        assert too_late.json()["error"]["details"][0]["field"] == "cancel_after"


def test_development_with_api_keys_refuses_private_webhook_targets(
    make_stack: Callable[..., Chatq],
) -> None:
    """Tenants share a development stack once API keys are set: private targets are
    refused as in production (http stays allowed), unless an operator allows them."""
    stack = make_stack(with_worker=False, env={"CHATQ_API__KEYS": "dev-key-1=acme"})
    with stack.client(key="dev-key-1") as c:
        for url in ("http://127.0.0.1:8080/hook", "http://[64:ff9b::7f00:1]/hook",
                    "http://169.254.169.254/latest/meta-data"):
            response = c.post("/v1/jobs", json=hi(webhook=url))
            assert response.status_code == 422, (url, response.text)
            assert response.json()["error"]["code"] == "unsafe_webhook", url
        assert c.post("/v1/jobs", json=hi(webhook="http://93.184.216.34/hook")
                      ).status_code == 503  # public http passes: no worker, so 503
    opened = make_stack(with_worker=False, env={
        "CHATQ_API__KEYS": "dev-key-1=acme", "CHATQ_WEBHOOKS__ALLOW_PRIVATE_TARGETS": "true"})
    with opened.client(key="dev-key-1") as c:
        assert c.post("/v1/jobs", json=hi(webhook="http://127.0.0.1:8080/hook")
                      ).status_code == 503
