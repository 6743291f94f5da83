"""Sync and async invocation modes (RFC 7240 Prefer), long-poll, cancel, retention."""

from __future__ import annotations

import time
from typing import Any

import httpx

from tests.conftest import Chatq
from tests.helpers import LONG, all_slots_busy, hi, submit, wait_done


def long_job(tokens: int) -> dict[str, Any]:
    return hi(LONG, max_tokens=tokens, temperature=0)


def wait_running_with_output(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["output"]:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never produced output while running")


def test_respond_async_answers_202_at_once(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=long_job(60), headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "respond-async"
    assert response.headers["Location"] == f"/v1/jobs/{response.json()['id']}"
    assert response.headers["Retry-After"]
    assert response.json()["status"] == "queued"
    wait_done(client, response.json()["id"])


def test_no_prefer_header_uses_the_default_async_mode(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens=4))
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    wait_done(client, response.json()["id"])


def test_wait_answers_200_with_the_finished_job(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens=16), headers={"Prefer": "wait=60"})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=60"
    job = response.json()
    assert job["status"] == "succeeded" and job["output"]
    assert "Location" not in response.headers


def test_wait_is_capped_by_server_config(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens=4), headers={"Prefer": "wait=9999"})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=120"


def test_wait_that_passes_answers_202_and_the_job_is_not_lost(client: httpx.Client) -> None:
    # Every slot busy, so the job cannot finish within the wait however fast the machine.
    with all_slots_busy(client):
        started = time.monotonic()
        response = client.post("/v1/jobs", json=long_job(150),
                               headers={"Prefer": "respond-async, wait=0.3"})
        assert time.monotonic() - started < 5
        assert response.status_code == 202
        assert response.headers["Preference-Applied"] == "wait=0.3"
        location = response.headers["Location"]
        assert client.get(location).json()["status"] in ("queued", "running")
    assert wait_done(client, response.json()["id"])["status"] == "succeeded"


def test_get_with_wait_long_polls_until_done(client: httpx.Client) -> None:
    job = submit(client, long_job(80))
    response = client.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=60"})
    assert response.status_code == 200
    assert response.headers["Preference-Applied"] == "wait=60"
    assert response.json()["status"] == "succeeded"


def test_invocations_has_the_same_modes(client: httpx.Client) -> None:
    queued = client.post("/invocations", json=hi(max_tokens=4),
                         headers={"Prefer": "respond-async"})
    assert queued.status_code == 202
    assert queued.headers["Location"] == f"/v1/jobs/{queued.json()['id']}"
    done = client.post("/invocations", json=hi(max_tokens=8), headers={"Prefer": "wait=60"})
    assert done.status_code == 200 and done.json()["status"] == "succeeded"
    bad = client.post("/invocations", json={"messages": []})
    assert bad.status_code == 422
    wait_done(client, queued.json()["id"])


def test_cancel_a_queued_job_it_never_runs(client: httpx.Client) -> None:
    with all_slots_busy(client):
        job = submit(client, hi(max_tokens=8))
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
    time.sleep(0.5)  # slots freed: the worker has had its chance to pick it up
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "cancelled"
    assert final["started_at"] is None and final["attempts"] == 0 and final["output"] == ""
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


def test_cancel_a_running_job_stops_it_and_the_model_stays_loaded(
    chatq: Chatq, client: httpx.Client
) -> None:
    before = chatq.heartbeat()
    job = submit(client, long_job(1000))
    running = wait_running_with_output(client, job["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    final = response.json()
    assert final["status"] == "cancelled" and final["finish_reason"] == "cancelled"
    tokens_at_cancel = len(running["output"].split(","))
    assert final["usage"]["completion_tokens"] < 300  # far from max_tokens
    assert final["output"].startswith(running["output"])
    # stopped within a few tokens of the request (coalescing window + one decode)
    assert len(final["output"].split(",")) - tokens_at_cancel < 40
    after_job = wait_done(client, submit(client, hi(max_tokens=8))["id"])
    assert after_job["status"] == "succeeded"
    after = chatq.heartbeat()
    assert (after["pid"], after["loaded_at"]) == (before["pid"], before["loaded_at"])


def test_cancel_a_finished_job_is_409_and_unknown_is_404(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, hi(max_tokens=4))["id"])
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert "succeeded" in response.json()["error"]["message"]
    assert client.post("/v1/jobs/job_nope/cancel").status_code == 404


def test_sync_only_server_with_short_retention(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(env={"CHATQ_API__MODES": '["sync"]', "CHATQ_API__DEFAULT_MODE": "sync",
                            "CHATQ_JOBS__RETENTION_S": "2"})
    with stack.client() as c:
        plain = c.post("/v1/jobs", json=hi(max_tokens=8))
        assert plain.status_code == 200 and plain.json()["status"] == "succeeded"
        refused_async = c.post("/v1/jobs", json=hi(max_tokens=4),
                               headers={"Prefer": "respond-async"})
        assert refused_async.status_code == 200  # async is not enabled: answered in wait mode
        assert "Preference-Applied" not in refused_async.headers
        job_id = plain.json()["id"]
        time.sleep(3)
        expired = c.get(f"/v1/jobs/{job_id}")
        assert expired.status_code == 410
        assert expired.json()["error"]["code"] == "gone"
        assert c.get("/v1/jobs/job_never_existed").status_code == 404
