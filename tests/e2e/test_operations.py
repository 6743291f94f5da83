"""What an operator sees: ``/metrics`` and ``/v1/queues`` after real jobs ran."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Chatq
from tests.helpers import LONG, as_if_its_worker_died, hi, submit, wait_done, wait_idle

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
CPU = {"model": "smollm2-135m", "queue": "cpu"}


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_after_a_job(client: httpx.Client) -> None:
    before = scrape(client)
    job = wait_done(client, submit(client, hi(max_tokens=12))["id"])
    assert job["status"] == "succeeded"
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("chatq_jobs_total", **CPU, status="succeeded") == 1
    assert delta("chatq_tokens_generated_total", **CPU) == job["usage"]["completion_tokens"]
    assert delta("chatq_prompt_tokens_total", **CPU) == job["usage"]["prompt_tokens"]
    for name in ("queue_wait_seconds", "ttft_seconds", "duration_seconds"):
        assert delta(f"chatq_job_{name}_count", **CPU) == 1, name
        assert value(after, f"chatq_job_{name}_bucket", **CPU, le="+Inf") >= 1
    duration_s = job["timings"]["duration_ms"] / 1000
    assert abs(delta("chatq_job_duration_seconds_sum", **CPU) - duration_s) < 1e-3

    assert ("chatq_queue_depth", frozenset(CPU.items())) in after
    assert value(after, "chatq_workers_live", **CPU) == 1
    assert value(after, "chatq_redis_up") == 1
    # HTTP requests are labelled by route template, not by the job's path.
    assert value(after, "chatq_http_requests_total", method="GET",
                 route="/v1/jobs/{job_id}", status="200") >= 1
    assert not any(job["id"] in dict(labels).get("route", "") for _, labels in after)


def test_unknown_paths_share_one_label(client: httpx.Client) -> None:
    client.get("/no/such/path/abc123")
    samples = scrape(client)
    assert value(samples, "chatq_http_requests_total", method="GET", route="unmatched",
                 status="404") >= 1


def test_failed_job_is_counted_as_failed(chatq: Chatq, client: httpx.Client) -> None:
    """A job whose worker died after its last attempt fails with worker_lost, counted once."""
    before = scrape(client)
    job = wait_done(client, submit(client, hi(max_tokens=4))["id"])
    as_if_its_worker_died(chatq.redis(), job["id"], attempts=99)
    failed = wait_done(client, job["id"])
    assert failed["status"] == "failed" and failed["error"]["code"] == "worker_lost"
    after = scrape(client)
    assert (value(after, "chatq_jobs_total", **CPU, status="failed")
            - value(before, "chatq_jobs_total", **CPU, status="failed")) == 1
    assert value(after, "chatq_jobs_total", **CPU, status="succeeded") >= 1


def test_queues_report_model_depth_workers_and_percentiles(client: httpx.Client) -> None:
    for _ in range(2):
        assert wait_done(client, submit(client, hi(max_tokens=8))["id"])["status"] == "succeeded"
    response = client.get("/v1/queues")
    assert response.status_code == 200, response.text
    queues = {q["queue"]: q for q in response.json()["data"]}
    cpu = queues["cpu"]
    assert cpu["model"] == "smollm2-135m"
    assert cpu["depth"] == 0 and cpu["running"] == 0
    assert cpu["live_workers"] == 1
    worker = cpu["workers"][0]
    assert worker["model"] == "smollm2-135m" and worker["jobs_done"] >= 2
    assert cpu["totals"]["succeeded"] >= 2 and cpu["totals"]["tokens_generated"] > 0
    recent = cpu["recent"]
    assert recent["jobs"] >= 2 and recent["by_status"]["succeeded"] >= 2
    assert 0 < recent["success_rate"] <= 1
    for name in ("queue_wait_ms", "ttft_ms", "duration_ms", "tokens_per_s"):
        p = recent[name]
        assert p is not None, name
        assert 0 <= p["p50"] <= p["p90"] <= p["p99"], (name, p)

    small = client.get("/v1/queues", params={"window": 1}).json()["data"]
    assert {q["queue"]: q for q in small}["cpu"]["recent"]["jobs"] == 1
    assert client.get("/v1/queues", params={"window": 0}).status_code == 422


def test_queue_depth_sums_every_priority_list(make_stack: Callable[..., Chatq]) -> None:
    """With no worker consuming, messages on the base list and Celery's priority lists
    all count in the queue's depth, in /v1/queues and /metrics alike."""
    idle = make_stack(with_worker=False)
    r = idle.redis()
    for name, n in (("cpu", 2), ("cpu\x06\x163", 1), ("cpu\x06\x169", 3)):
        r.rpush(name, *["{}"] * n)
    with idle.client() as c:
        cpu = {q["queue"]: q for q in c.get("/v1/queues").json()["data"]}["cpu"]
        assert cpu["depth"] == 6
        assert cpu["live_workers"] == 0 and cpu["running"] == 0
        assert cpu["recent"]["jobs"] == 0 and cpu["recent"]["success_rate"] is None
        samples = scrape(c)
    assert value(samples, "chatq_queue_depth", **CPU) == 6
    assert value(samples, "chatq_workers_live", **CPU) == 0


def test_a_running_job_shows_as_running(client: httpx.Client) -> None:
    # The heartbeats (every 0.5 s here) list the running jobs; a job that could end
    # between two beats made this test depend on the machine's speed. This one counts on
    # greedily to 1,500 tokens, so it is still running at the next beats whatever the
    # machine; it is cancelled once both views have shown it.
    wait_idle(client)
    job = submit(client, hi(LONG, max_tokens=1500, temperature=0))
    deadline = time.monotonic() + 60
    seen_running = False
    while time.monotonic() < deadline and not seen_running:
        status = client.get(f"/v1/jobs/{job['id']}").json()["status"]
        cpu = {q["queue"]: q for q in client.get("/v1/queues").json()["data"]}["cpu"]
        seen_running = status == "running" and cpu["running"] == 1 and any(
            job["id"] in w["running"] for w in cpu["workers"])
        if status not in ("queued", "running"):
            break
        time.sleep(0.1)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    done = wait_done(client, job["id"])
    assert seen_running, done
    assert done["status"] == "cancelled" and done["output"]  # it ran, and was stopped
    assert done["usage"]["completion_tokens"] < 1500


def test_redis_at_its_memory_limit_refuses_new_jobs_and_loses_none(
        chatq: Chatq, client: httpx.Client) -> None:
    """Compose runs Redis with maxmemory and noeviction: at the limit a write fails, so a
    new job gets 503 and every job already there stays (no key is evicted)."""
    kept = wait_done(client, submit(client, hi(max_tokens=4))["id"])
    r = chatq.redis()
    policy = r.config_get("maxmemory-policy")["maxmemory-policy"]
    try:
        r.config_set("maxmemory-policy", "noeviction")
        r.config_set("maxmemory", max(1, int(r.info("memory")["used_memory"]) // 2))
        refused = client.post("/v1/jobs", json=hi(max_tokens=4),
                              headers={"Prefer": "respond-async"})
    finally:
        r.config_set("maxmemory", 0)
        r.config_set("maxmemory-policy", policy)
    assert refused.status_code == 503, refused.text
    again = client.get(f"/v1/jobs/{kept['id']}").json()
    assert (again["status"], again["output"]) == ("succeeded", kept["output"])
    assert wait_done(client, submit(client, hi(max_tokens=4))["id"])["status"] == "succeeded"
