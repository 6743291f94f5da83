"""The job path end to end: HTTP API -> Celery queue -> worker with the real model."""

from __future__ import annotations

import time
from datetime import datetime

import httpx

from tests.conftest import Chatq
from tests.helpers import all_slots_busy, hi, submit, wait_done


def test_submit_then_poll_until_succeeded(client: httpx.Client) -> None:
    response = client.post("/v1/jobs", json=hi(max_tokens=32),
                           headers={"Prefer": "respond-async"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert int(response.headers["Retry-After"]) >= 1
    assert job["status"] == "queued"
    assert job["model"] == "smollm2-135m" and job["queue"] == "cpu"

    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = client.get(f"/v1/jobs/{job['id']}").json()
        seen.add(current["status"])
        if current["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.02)
    assert current["status"] == "succeeded", current
    assert current["output"].strip()
    assert current["finish_reason"] in ("stop", "length")
    usage = current["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["completion_tokens"] <= 32
    timings = current["timings"]
    for name in ("queue_wait_ms", "ttft_ms", "duration_ms"):
        assert timings[name] is not None and timings[name] >= 0, name
    created, started, finished = (datetime.fromisoformat(current[k])
                                  for k in ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished
    assert current["attempts"] == 1


def test_max_tokens_bounds_the_answer(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, hi("Write a long story about a dragon.",
                                              max_tokens=5))["id"])
    assert job["status"] == "succeeded"
    assert job["usage"]["completion_tokens"] == 5
    assert job["finish_reason"] == "length"


def test_queued_job_shows_its_position(client: httpx.Client) -> None:
    with all_slots_busy(client):
        first = submit(client, hi("Hi", max_tokens=4))
        last = submit(client, hi("Hi", max_tokens=4))
        assert client.get(f"/v1/jobs/{first['id']}").json()["position"] == 0
        assert last["status"] == "queued" and last["position"] == 1
    for j in (first, last):
        assert wait_done(client, j["id"])["status"] == "succeeded"
    assert client.get(f"/v1/jobs/{last['id']}").json()["position"] is None


def test_model_is_loaded_once_per_worker_process(chatq: Chatq, client: httpx.Client) -> None:
    before = chatq.heartbeat()
    for _ in range(2):
        assert wait_done(client, submit(client, hi(max_tokens=8))["id"])["status"] == "succeeded"
    time.sleep(1.2)  # one heartbeat interval
    after = chatq.heartbeat()
    assert after["pid"] == before["pid"]
    assert after["loaded_at"] == before["loaded_at"]
    assert after["model"] == "smollm2-135m" and after["queue"] == "cpu"
    assert int(after["jobs_done"]) >= int(before["jobs_done"]) + 2


def test_unknown_job_id_answers_404(client: httpx.Client) -> None:
    response = client.get("/v1/jobs/job_doesnotexist")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "job_doesnotexist" in response.json()["error"]["message"]


def test_models_lists_the_registry(client: httpx.Client) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["smollm2-135m"]
    assert body["data"][0]["object"] == "model"


def test_healthz_and_readyz(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["queues"] == ["cpu"]


def test_readyz_names_the_queue_when_its_worker_stops(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack()
    with stack.client() as c:
        assert c.get("/readyz").status_code == 200
        assert stack.worker is not None
        stack.worker.stop()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            response = c.get("/readyz")
            if response.status_code == 503:
                break
            time.sleep(0.2)
        assert response.status_code == 503
        error = response.json()["error"]
        assert "cpu" in error["message"]
        assert {"component": "worker:cpu", "reason": "no live worker on queue 'cpu'"} in (
            error["details"])
        # and a job for that queue is refused with 503 naming it, nothing queued
        refused = c.post("/v1/jobs", json=hi())
        assert refused.status_code == 503
        assert "'cpu'" in refused.json()["error"]["message"]
