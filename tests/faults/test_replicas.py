"""Several of everything (issue 30): two API processes and two workers on one queue, as on
two hosts behind a load balancer, all on one Redis.

- Streams spread over the two APIs all complete, and each API process receives only the
  pub/sub messages of its own clients' jobs (its ``chatq_pubsub_messages_total`` against
  what a pattern subscriber of the test's own saw on every job channel).
- The same load through one API and through three: per-replica inbound traffic falls
  with the replicas (the README's figures).
- Cancel and wait-mode through the other replica than the one that made the job.
- An API process killed while clients stream through it: they reconnect to the other
  with ``Last-Event-ID`` and lose nothing.
- One of the two workers killed mid-batch: its jobs finish on the other.

``CHATQ_TEST_REPLICA_STREAMS`` sets the number of streams of the first test (60 here for
a busy CI machine; the issue's figure is 1,000: ``CHATQ_TEST_REPLICA_STREAMS=1000``).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from ops.devstack import Proc, free_port, wait_for
from shared.events import is_terminal, parse_batch
from shared.settings import DEV_API_KEY
from tests.conftest import Chatq, new_stack, start_chatq
from tests.faults.conftest import report, wait_status
from tests.helpers import LONG, SseStream, hi, parse_sse, stream_job, submit, wait_done

STREAMS = int(os.environ.get("CHATQ_TEST_REPLICA_STREAMS", "60"))
TOKENS = 4  # per job: the test is about routing events, not generation
ENV = {"CHATQ_API__MAX_QUEUE_DEPTH": "2000", "CHATQ_API__MAX_TENANT_QUEUE_DEPTH": "2000"}
AUTH = {"Authorization": f"Bearer {DEV_API_KEY}"}
CHANNEL_PREFIX = "chatq:chan:"


@dataclass
class Replicas:
    chatq: Chatq
    apis: list[str]  # base URLs
    procs: list[Proc]
    workers: list[Proc]

    def client(self, i: int, **kwargs: Any) -> httpx.Client:
        kwargs.setdefault("timeout", 120)
        return httpx.Client(base_url=self.apis[i], headers=AUTH, **kwargs)

    def start_api(self, name: str) -> tuple[str, Proc]:
        port = free_port()
        proc = self.chatq.stack.start_api(port, name=name)
        return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    stack = new_stack(tmp_path_factory.mktemp("replicas"), "stack")
    stack.env.update(ENV)
    try:
        chatq = start_chatq(stack)
        assert chatq.worker is not None
        first = chatq.worker
        second = chatq.start_worker("cpu", name="worker-cpu-b")
        port = free_port()
        api_b = stack.start_api(port, name="api-b")
        yield Replicas(chatq, [chatq.base_url, f"http://127.0.0.1:{port}"],
                       [chatq.api, api_b], [first, second])
    finally:
        stack.stop()


def pubsub_messages(base_url: str) -> int:
    """The API process's ``chatq_pubsub_messages_total``."""
    text = httpx.get(f"{base_url}/metrics", headers=AUTH, timeout=30).text
    for line in text.splitlines():
        if line.startswith("chatq_pubsub_messages_total "):
            return int(float(line.split()[1]))
    raise AssertionError("no chatq_pubsub_messages_total in /metrics")


@dataclass
class AllChannels:
    """Every job channel's messages, as one pattern subscriber of the test's own sees them:
    what each API process received before issue 30."""

    redis_url: str
    counts: Counter[str] = field(default_factory=Counter)
    ended: set[str] = field(default_factory=set)  # jobs whose terminal status was published

    def __post_init__(self) -> None:
        self.client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        self.pubsub = self.client.pubsub()
        self.pubsub.psubscribe(f"{CHANNEL_PREFIX}*")
        confirmed = self.pubsub.get_message(timeout=10)  # before any job is made
        assert confirmed is not None and confirmed["type"] == "psubscribe", confirmed
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            message = self.pubsub.get_message(timeout=0.2)
            if message is None or message["type"] != "pmessage":
                continue
            job_id = message["channel"].removeprefix(CHANNEL_PREFIX)
            self.counts[job_id] += 1
            if any(is_terminal(e) for e in parse_batch(message["data"])):
                self.ended.add(job_id)

    def close(self, jobs: Sequence[str]) -> None:
        """Stop once every job in ``jobs`` has had its terminal status published."""
        wait_for(lambda: self.ended.issuperset(jobs), 60, "every job's last message")
        self.stopping.set()
        self.thread.join(10)
        self.pubsub.close()
        self.client.close()


@dataclass
class Load:
    jobs: list[list[str]]  # job ids, by the API that made and streamed them
    received: list[int]  # pub/sub messages each API received meanwhile
    seconds: float

    def own(self, counts: Counter[str], i: int) -> int:
        return sum(counts[j] for j in self.jobs[i])


def check_stream(stream: SseStream, final: dict[str, Any]) -> None:
    assert final["status"] == "succeeded", final
    assert stream.last.event == "done", stream.events[-3:]
    assert stream.text == final["output"]
    seqs = [e.id for e in stream.tokens]
    assert seqs == list(range(1, len(seqs) + 1))  # every token once, in order


async def submit_and_stream(client: httpx.AsyncClient, i: int) -> str:
    created = await client.post(
        "/v1/jobs", json=hi(f"Say the number {i}.", max_tokens=TOKENS, temperature=0),
        headers={"Prefer": "respond-async"})
    assert created.status_code == 202, created.text
    job_id: str = created.json()["id"]
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        stream = parse_sse([line async for line in response.aiter_lines()], SseStream())
    check_stream(stream, (await client.get(f"/v1/jobs/{job_id}")).json())
    return job_id


def spread_load(apis: Sequence[str], streams: int) -> Load:
    """``streams`` jobs, job ``i`` made and streamed through API ``i % len(apis)``; all
    at once."""
    before = [pubsub_messages(url) for url in apis]

    async def main() -> list[str]:
        clients = [httpx.AsyncClient(
            base_url=url, headers=AUTH, timeout=httpx.Timeout(600, connect=60),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))
            for url in apis]
        try:
            return await asyncio.gather(*(submit_and_stream(clients[i % len(apis)], i)
                                          for i in range(streams)))
        finally:
            for client in clients:
                await client.aclose()

    started = time.monotonic()
    ids = asyncio.run(main())
    took = time.monotonic() - started
    received = [pubsub_messages(url) - b for url, b in zip(apis, before, strict=True)]
    by_api = [ids[i::len(apis)] for i in range(len(apis))]
    return Load(by_api, received, took)


def test_streams_over_two_apis_each_receiving_only_its_own(replicas: Replicas) -> None:
    everything = AllChannels(replicas.chatq.redis_url)
    load = spread_load(replicas.apis, STREAMS)
    everything.close([j for ids in load.jobs for j in ids])
    total = sum(everything.counts.values())
    for i, received in enumerate(load.received):
        own = load.own(everything.counts, i)
        # Only its own clients' jobs (a message published before its subscription, which
        # the client read from the log, is not received at all), never the others'.
        assert 0 < received <= own, (i, received, own, total)
        assert received < 0.75 * total, (i, received, total)
    report(f"{STREAMS} streams over 2 API replicas", seconds=load.seconds,
           messages_published=total, api_a_received=load.received[0],
           api_b_received=load.received[1])


def test_inbound_pubsub_per_replica_with_one_and_three_apis(replicas: Replicas) -> None:
    """The same load through one API, then spread over three (the README's figures)."""
    third_url, third = replicas.start_api("api-c")
    try:
        everything = AllChannels(replicas.chatq.redis_url)
        one = spread_load(replicas.apis[:1], STREAMS)
        three = spread_load([*replicas.apis, third_url], STREAMS)
        everything.close([j for load in (one, three) for ids in load.jobs for j in ids])
    finally:
        third.stop()
    alone = one.received[0]
    assert alone > 0
    for i, received in enumerate(three.received):
        assert received <= three.own(everything.counts, i)
        assert received < 0.6 * alone, (three.received, alone)
    published = [sum(load.own(everything.counts, i) for i in range(len(load.jobs)))
                 for load in (one, three)]
    report(f"{STREAMS} streams, inbound pub/sub messages per API replica",
           published_1=published[0], one_replica=alone, published_3=published[1],
           three_replicas="/".join(map(str, three.received)))


def test_cancel_and_wait_mode_through_the_other_replica(replicas: Replicas) -> None:
    with replicas.client(0) as a, replicas.client(1) as b:
        job = submit(a, hi(max_tokens=8, temperature=0))
        waited = b.get(f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=120"})
        assert waited.status_code == 200 and waited.json()["status"] == "succeeded"
        assert waited.json()["output"] == wait_done(a, job["id"])["output"]

        long = submit(a, hi(LONG, max_tokens=400, temperature=0))
        wait_status(a, long["id"], {"running"}, 120, min_output=1)
        streamed: list[SseStream] = []
        reader = threading.Thread(target=lambda: streamed.append(stream_job(a, long["id"])))
        reader.start()
        cancelled = b.post(f"/v1/jobs/{long['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert wait_done(a, long["id"])["status"] == "cancelled"
        reader.join(120)
        [stream] = streamed
        assert stream.last.event == "done" and stream.last.data["status"] == "cancelled"
        assert stream.text == a.get(f"/v1/jobs/{long['id']}").json()["output"]
        assert b.post(f"/v1/jobs/{long['id']}/cancel").status_code == 409


@dataclass
class Resumed:
    """A client's stream of one job, reconnecting to the next API when one is cut."""

    job_id: str
    urls: list[str]
    stream: SseStream = field(default_factory=SseStream)
    resumed_from: list[int] = field(default_factory=list)  # Last-Event-ID of each reconnect
    streaming: threading.Event = field(default_factory=threading.Event)  # a token arrived

    def follow(self) -> None:
        for url in self.urls:
            last = self.stream.tokens[-1].id if self.stream.tokens else None
            headers = {} if last is None else {"Last-Event-ID": str(last)}
            if url != self.urls[0]:
                self.resumed_from.append(last or 0)
            try:
                with httpx.Client(base_url=url, headers=AUTH, timeout=120) as client, \
                        client.stream("GET", f"/v1/jobs/{self.job_id}/events",
                                      headers=headers) as response:
                    assert response.status_code == 200
                    parse_sse(self._watch(response.iter_lines()), self.stream)
            except httpx.TransportError:
                continue  # the API went away: on to the next
            if self.stream.events and self.stream.last.event == "done":
                return

    def _watch(self, lines: Iterator[str]) -> Iterator[str]:
        for line in lines:
            if self.stream.tokens:
                self.streaming.set()
            yield line


def test_clients_of_a_killed_api_resume_on_the_other(replicas: Replicas) -> None:
    victim, survivor = replicas.apis[1], replicas.apis[0]
    with replicas.client(0) as a:
        jobs = [submit(a, hi(LONG, max_tokens=100, temperature=0))["id"] for _ in range(4)]
        followers = [Resumed(j, [victim, survivor]) for j in jobs]
        threads = [threading.Thread(target=f.follow) for f in followers]
        for thread in threads:
            thread.start()
        for follower in followers:
            assert follower.streaming.wait(180), "no token reached a client"
        assert all(a.get(f"/v1/jobs/{j}").json()["status"] == "running" for j in jobs)
        replicas.procs[1].kill()  # SIGKILL: its connections are cut mid-stream
        killed_at = time.monotonic()
        for thread in threads:
            thread.join(300)
        finals = [wait_done(a, j, timeout=300) for j in jobs]
    for follower, final in zip(followers, finals, strict=True):
        assert len(follower.resumed_from) == 1 and follower.resumed_from[0] >= 1
        check_stream(follower.stream, final)  # nothing lost, nothing twice
    report("API replica killed mid-stream", streams=len(jobs),
           resumed_all=all(f.resumed_from for f in followers),
           seconds_to_all_done=time.monotonic() - killed_at)
    # An operator starts a new replica; the later tests have two again.
    replicas.apis[1], replicas.procs[1] = replicas.start_api("api-b2")


def running_on(replicas: Replicas, job_id: str) -> str | None:
    """The pid of the worker running the job (the recovery sweeper's list), if any."""
    client = replicas.chatq.redis()
    try:
        worker = client.hget("chatq:running", job_id)
        return None if worker is None else client.hget(f"chatq:worker:{worker}", "pid")
    finally:
        client.close()


def test_a_killed_worker_s_jobs_finish_on_the_other(replicas: Replicas) -> None:
    victim, other = replicas.workers[1], replicas.workers[0]
    with replicas.client(0) as a, replicas.client(1) as b:
        jobs = [submit((a, b)[i % 2], hi(LONG, max_tokens=60, temperature=0))["id"]
                for i in range(8)]
        wait_for(lambda: any(running_on(replicas, j) == str(victim.popen.pid)
                             for j in jobs), 180, "a job on the worker to kill")
        on_victim = [j for j in jobs if running_on(replicas, j) == str(victim.popen.pid)]
        victim.kill()
        finals = [wait_done(a, j, timeout=600) for j in jobs]
        assert all(f["status"] == "succeeded" for f in finals), finals
        for job_id in on_victim:
            final = next(f for f in finals if f["id"] == job_id)
            assert final["attempts"] == 2
            check_stream(stream_job(b, job_id), final)  # the rest after what was streamed
        assert other.popen.poll() is None  # the rest ran there
    report("worker killed mid-batch, 2 workers on one queue", jobs=len(jobs),
           on_killed_worker=len(on_victim))
