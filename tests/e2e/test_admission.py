"""Admission: every bad request answered clearly, before anything is queued."""

from __future__ import annotations

import httpx
import pytest

from shared.settings import load_settings
from tests.helpers import all_slots_busy, hi, submit, wait_done


def test_prompt_plus_max_tokens_over_context_is_400_with_both_counts(
    client: httpx.Client,
) -> None:
    response = client.post("/v1/jobs", json=hi("Hello there", max_tokens=2040))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded"
    details = error["details"]
    assert details["max_tokens"] == 2040 and details["context_size"] == 2048
    assert 10 < details["prompt_tokens"] < 100  # counted with the model's tokenizer
    assert str(details["prompt_tokens"]) in error["message"] and "2040" in error["message"]
    # the same prompt fits with a smaller max_tokens: the count is exact, not a guess
    fits = 2048 - details["prompt_tokens"]
    ok = client.post("/v1/jobs", json=hi("Hello there", max_tokens=fits),
                     headers={"Prefer": "respond-async"})
    assert ok.status_code == 202
    client.post(f"/v1/jobs/{ok.json()['id']}/cancel")
    too_many = client.post("/v1/jobs", json=hi("Hello there", max_tokens=fits + 1))
    assert too_many.status_code == 400


def test_long_prompt_alone_over_context_is_400(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi("word " * 3000, max_tokens=10))
    assert response.status_code == 400
    assert response.json()["error"]["details"]["prompt_tokens"] > 2048


def test_full_queue_is_429_with_retry_after(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(env={"CHATQ_API__MAX_QUEUE_DEPTH": "1"})
    with stack.client() as c:
        with all_slots_busy(c):
            waiting_job = submit(c, hi(max_tokens=4))
            refused = c.post("/v1/jobs", json=hi(max_tokens=4))
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) > 0
            error = refused.json()["error"]
            assert error["code"] == "queue_full" and "'cpu'" in error["message"]
        assert wait_done(c, waiting_job["id"])["status"] == "succeeded"
        # room again once the line moved
        assert c.post("/v1/jobs", json=hi(max_tokens=4), headers={
            "Prefer": "wait=30"}).status_code == 200


def test_redis_down_is_503_and_nothing_half_written(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack()
    redis_proc = next(p for p in stack.stack.procs if p.name == "redis")
    with stack.client() as c:
        redis_proc.kill()
        response = c.post("/v1/jobs", json=hi(max_tokens=4))
        assert response.status_code == 503
        assert "Redis" in response.json()["error"]["message"]
        assert c.get("/healthz").status_code == 200
        ready = c.get("/readyz")
        assert ready.status_code == 503 and "Redis" in ready.json()["error"]["message"]


def test_production_refuses_unsafe_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATQ_ENV", "production")
    with pytest.raises(ValueError, match="production needs API keys"):
        load_settings()
    monkeypatch.setenv("CHATQ_API__KEYS", "chatq-dev-key=ops")
    with pytest.raises(ValueError, match="development API key is refused"):
        load_settings()
    monkeypatch.setenv("CHATQ_API__KEYS", "s3cret-key-1=ops")
    assert load_settings().env.value == "production"


def test_one_tenants_backlog_never_makes_another_tenant_429(make_stack) -> None:  # type: ignore[no-untyped-def]
    """Issue 26's flood: alpha fills its share of the line with batch jobs and gets 429
    naming its own limit; beta's interactive question is still taken, goes first, and runs."""
    stack = make_stack(env={"CHATQ_API__KEYS": "key-alpha=alpha,key-beta=beta",
                            "CHATQ_API__MAX_TENANT_QUEUE_DEPTH": "3"})
    with stack.client(key="key-alpha") as alpha, stack.client(key="key-beta") as beta:
        with all_slots_busy(alpha):
            backlog = [submit(alpha, hi(max_tokens=4, priority="batch")) for _ in range(3)]
            refused = alpha.post("/v1/jobs", json=hi(max_tokens=4, priority="batch"))
            assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
            error = refused.json()["error"]
            assert error["code"] == "queue_full"
            assert error["details"] == {"queue": "cpu", "limit": 3, "scope": "tenant"}
            question = submit(beta, hi(max_tokens=4))
            assert question["position"] == 0  # ahead of alpha's batch backlog
            # and beta's batch job behind alpha's first only (its fair share)
            assert submit(beta, hi(max_tokens=4, priority="batch"))["position"] == 2
        assert wait_done(beta, question["id"])["status"] == "succeeded"
        for job in backlog:
            assert wait_done(alpha, job["id"])["status"] == "succeeded"


def test_a_tenants_flood_does_not_keep_another_tenants_job_behind_it(make_stack) -> None:  # type: ignore[no-untyped-def]
    """Issue 26's fair share: alpha queues six batch jobs, then beta one; beta's goes
    behind alpha's first only (its position says so) and starts before alpha's fifth."""
    stack = make_stack(env={"CHATQ_API__KEYS": "key-alpha=alpha,key-beta=beta"})
    with stack.client(key="key-alpha") as alpha, stack.client(key="key-beta") as beta:
        with all_slots_busy(alpha):
            flood = [submit(alpha, hi(max_tokens=8, priority="batch")) for _ in range(6)]
            assert [job["position"] for job in flood] == list(range(6))
            theirs = submit(beta, hi(max_tokens=8, priority="batch"))
            assert theirs["position"] == 1
            assert alpha.get(f"/v1/jobs/{flood[1]['id']}").json()["position"] == 2
        done = {job["id"]: wait_done(alpha, job["id"]) for job in flood}
        mine = wait_done(beta, theirs["id"])
    assert mine["status"] == "succeeded"
    assert all(job["status"] == "succeeded" for job in done.values())
    assert mine["started_at"] < done[flood[4]["id"]]["started_at"]
