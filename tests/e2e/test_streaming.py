"""Token streaming over SSE: every token once, in order, however late the client joins."""

from __future__ import annotations

import asyncio
import time

import httpx

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.helpers import (
    LONG,
    SseStream,
    all_slots_busy,
    hi,
    parse_sse,
    stream_job,
    submit,
    wait_done,
)


def assert_complete(stream: SseStream, job: dict[str, object], first_seq: int = 1) -> None:
    """Token seqs are contiguous from first_seq, then status, then done with the final job."""
    seqs = [e.id for e in stream.tokens]
    assert seqs == list(range(first_seq, first_seq + len(seqs)))
    assert [e.data["seq"] for e in stream.tokens] == seqs
    assert stream.last.event == "done"
    assert stream.last.data["id"] == job["id"]
    assert stream.last.data["status"] == job["status"]
    statuses = [e.data["status"] for e in stream.events if e.event == "status"]
    assert statuses[-1] == job["status"]
    assert len(statuses) == len(set(statuses))  # no status twice


def wait_for_output(client: httpx.Client, job_id: str, chars: int) -> dict[str, object]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if len(job["output"]) >= chars or (job["status"] != "running" and job["output"]):
            return job  # type: ignore[no-any-return]
        time.sleep(0.01)
    raise AssertionError("no output appeared")


def test_stream_of_a_200_token_answer_equals_the_final_output(client: httpx.Client) -> None:
    job = submit(client, hi(LONG, max_tokens=200, temperature=0))
    stream = stream_job(client, job["id"])
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded"
    assert final["usage"]["completion_tokens"] == 200
    assert stream.text == final["output"]
    assert stream.last.data["output"] == final["output"]
    assert_complete(stream, final)


def test_client_joining_mid_generation_gets_the_full_text_once(client: httpx.Client) -> None:
    job = submit(client, hi(LONG, max_tokens=150, temperature=0))
    partial = wait_for_output(client, job["id"], 20)
    assert partial["status"] == "running"  # the job had started before we joined
    stream = stream_job(client, job["id"])
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert stream.text == final["output"]
    assert stream.text.startswith(partial["output"])
    assert_complete(stream, final)


def test_client_joining_after_the_job_finished_gets_the_full_text(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, hi(max_tokens=40))["id"])
    stream = stream_job(client, job["id"])
    assert stream.text == job["output"] and stream.text
    assert_complete(stream, job)


def test_last_event_id_resumes_after_that_token(client: httpx.Client) -> None:
    job = wait_done(client, submit(client, hi(LONG, max_tokens=60, temperature=0))["id"])
    full = stream_job(client, job["id"])
    k = full.tokens[len(full.tokens) // 2].id
    assert k is not None
    resumed = stream_job(client, job["id"], **{"Last-Event-ID": str(k)})
    assert [e.id for e in resumed.tokens] == [e.id for e in full.tokens if e.id > k]
    assert full.text == "".join(e.data["text"] for e in full.tokens[:k]) + resumed.text
    assert_complete(resumed, job, first_seq=k + 1)


def test_bad_last_event_id_is_refused(client: httpx.Client) -> None:
    job = submit(client, hi(max_tokens=4))
    response = client.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "abc"})
    assert response.status_code == 422
    assert "Last-Event-ID" in response.json()["error"]["message"]


def test_unknown_job_stream_is_404(client: httpx.Client) -> None:
    assert client.get("/v1/jobs/job_nope/events").status_code == 404


def test_idle_stream_gets_keepalive_comments_while_queued(client: httpx.Client) -> None:
    stream = SseStream()
    with all_slots_busy(client) as fillers:
        job = submit(client, hi(max_tokens=8))
        with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
            lines = response.iter_lines()
            head: list[str] = []
            for line in lines:  # until the first keep-alive comment, while it waits
                head.append(line)
                if line.startswith(":"):
                    break
            first = parse_sse(head, SseStream()).events[0]
            assert (first.event, first.data["status"]) == ("status", "queued")
            for filler in fillers:  # free the slots: the job runs, the stream goes on
                client.post(f"/v1/jobs/{filler}/cancel")
            parse_sse([*head, *lines], stream)
    assert stream.comments >= 1  # keep-alive while waiting behind the long jobs
    assert stream.last.event == "done" and stream.last.data["status"] == "succeeded"


async def _collect(base_url: str, job_id: str) -> SseStream:
    auth = {"Authorization": f"Bearer {DEV_API_KEY}"}
    async with (httpx.AsyncClient(base_url=base_url, timeout=60, headers=auth) as c,
                c.stream("GET", f"/v1/jobs/{job_id}/events") as response):
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines()]
    return parse_sse(lines, SseStream())


def pubsub_connections(chatq: Chatq, name: str | None = None) -> int:
    """Connections holding a subscription (all, or those of clients with this name)."""
    clients = chatq.redis().client_list()
    return sum(1 for c in clients
               if (int(c.get("sub", 0)) or int(c.get("psub", 0)))
               and (name is None or c.get("name") == name))


def test_fifty_clients_get_identical_text_over_one_pubsub_connection(
    chatq: Chatq, client: httpx.Client
) -> None:
    job = submit(client, hi(LONG, max_tokens=120, temperature=0))
    before = pubsub_connections(chatq)

    async def main() -> list[SseStream]:
        tasks = [asyncio.create_task(_collect(chatq.base_url, job["id"])) for _ in range(50)]
        deadline = time.monotonic() + 10
        while client.get("/healthz").json()["stream_subscribers"] < 50:
            assert time.monotonic() < deadline, "50 clients did not connect"
            await asyncio.sleep(0.02)
        # all 50 are connected (the job is still generating): the API holds one
        # pub/sub connection, and the 50 clients added none
        assert pubsub_connections(chatq, name="chatq-api-pubsub") == 1
        assert pubsub_connections(chatq) == before
        return await asyncio.gather(*tasks)

    streams = asyncio.run(main())
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "succeeded"
    assert {s.text for s in streams} == {final["output"]}
    for s in streams:
        assert_complete(s, final)
    assert pubsub_connections(chatq, name="chatq-api-pubsub") == 1
    assert client.get("/healthz").json()["stream_subscribers"] == 0


def test_disconnecting_client_leaves_nothing_behind_and_job_runs_on(
    client: httpx.Client,
) -> None:
    job = submit(client, hi(LONG, max_tokens=100, temperature=0))
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break  # leave mid-stream
    deadline = time.monotonic() + 5
    while client.get("/healthz").json()["stream_subscribers"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/healthz").json()["stream_subscribers"] == 0
    assert wait_done(client, job["id"])["status"] == "succeeded"


def test_failed_job_ends_its_stream_with_error_and_keeps_partial_output(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(env={"CHATQ_CELERY__SOFT_TIME_LIMIT_S": "3",
                            "CHATQ_CELERY__HARD_TIME_LIMIT_S": "8"})
    with stack.client() as c:
        job = submit(c, hi(LONG, max_tokens=1500, temperature=0))
        stream = stream_job(c, job["id"])
        final = c.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "failed"
    assert final["error"]["code"] == "timeout"
    assert final["finish_reason"] == "timeout"
    assert final["output"] and final["output"] == stream.text  # partial output kept
    assert final["usage"]["completion_tokens"] < 1500
    assert stream.last.event == "error"
    assert stream.last.data["error"]["code"] == "timeout"
    assert stream.last.data["job"]["status"] == "failed"
