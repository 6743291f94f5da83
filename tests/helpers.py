"""Small helpers the tests share: submitting, polling, reading event streams."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import redis

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def hi(text: str = "Say hello in one short sentence.", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **fields}


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body,
                           headers={"Prefer": "respond-async", **headers})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_done(client: httpx.Client, job_id: str, timeout: float = 600) -> dict[str, Any]:
    """The job once it has ended. ``timeout`` only catches a job that never ends: a busy
    2-core CI machine runs these jobs many times slower than a quiet one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        if job["status"] in TERMINAL:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not done after {timeout} s: {job}")


@dataclass
class SseEvent:
    event: str
    data: Any
    id: int | None = None


@dataclass
class SseStream:
    events: list[SseEvent] = field(default_factory=list)
    comments: int = 0

    @property
    def tokens(self) -> list[SseEvent]:
        return [e for e in self.events if e.event == "token"]

    @property
    def text(self) -> str:
        return "".join(e.data["text"] for e in self.tokens)

    @property
    def last(self) -> SseEvent:
        return self.events[-1]


def parse_sse(lines: Iterable[str], into: SseStream) -> SseStream:
    """Parse Server-Sent Events lines until the stream ends."""
    event, data, event_id = "message", "", None
    for line in lines:
        if line.startswith(":"):
            into.comments += 1
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line == "" and data:
            into.events.append(SseEvent(event, json.loads(data), event_id))
            event, data, event_id = "message", "", None
    return into


def stream_job(client: httpx.Client, job_id: str, **headers: str) -> SseStream:
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return parse_sse(response.iter_lines(), SseStream())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = json.loads(self.body)
        return job


class Receiver:
    """A webhook receiver on 127.0.0.1 (a real HTTP server in a thread): records every
    request and answers with the next of ``statuses`` (200 once they run out)."""

    def __init__(self, statuses: Iterable[int] = ()) -> None:
        self.statuses = list(statuses)
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                with receiver._lock:
                    receiver.received.append(Received(
                        {k.lower(): v for k, v in self.headers.items()}, body, time.time()))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.received) < count:
            assert time.monotonic() < deadline, (
                f"{len(self.received)} of {count} webhook requests after {timeout} s")
            time.sleep(0.02)
        return list(self.received)


class BlackHole:
    """A receiver that is dead but not gone: it takes connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # connections complete in the kernel; none is ever accepted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *_: object) -> None:
        self.sock.close()


# A prompt the demo model answers at length (greedy, it counts on to max_tokens).
LONG = "Write the numbers from 1 to 2000 separated by commas, without stopping."
FILLER = LONG


def slots(client: httpx.Client, queue: str = "cpu") -> int:
    """How many jobs the queue's worker generates at once (from its heartbeat)."""
    for q in client.get("/v1/queues").json()["data"]:
        if q["queue"] == queue and q["workers"]:
            return max(int(w["slots"]) for w in q["workers"])
    raise AssertionError(f"no live worker on queue {queue!r}")


def wait_idle(client: httpx.Client, queue: str = "cpu", timeout: float = 120) -> None:
    """Nothing queued or running on the queue (jobs of earlier tests finished)."""
    deadline = time.monotonic() + timeout
    while True:
        [q] = [q for q in client.get("/v1/queues").json()["data"] if q["queue"] == queue]
        if q["depth"] == 0 and q["running"] == 0:
            return
        assert time.monotonic() < deadline, f"queue {queue!r} not idle: {q}"
        time.sleep(0.05)


@contextmanager
def all_slots_busy(client: httpx.Client, queue: str = "cpu",
                   timeout: float = 60) -> Iterator[list[str]]:
    """Every slot of the queue's worker generating a long job, so that new jobs wait in
    line; the long jobs are cancelled (and waited for) on the way out. Each long job is
    submitted once the one before has started, so a queue depth limit of 1 is enough."""
    fillers: list[str] = []
    try:
        for _ in range(slots(client, queue)):
            fillers.append(submit(client, hi(FILLER, max_tokens=1500, temperature=0))["id"])
            deadline = time.monotonic() + timeout
            while client.get(f"/v1/jobs/{fillers[-1]}").json()["status"] != "running":
                assert time.monotonic() < deadline, "a long job did not start"
                time.sleep(0.05)
        yield fillers
    finally:
        for job_id in fillers:
            client.post(f"/v1/jobs/{job_id}/cancel")
        for job_id in fillers:
            wait_done(client, job_id)


def as_if_its_worker_died(client: redis.Redis, job_id: str, attempts: int | None = None) -> None:
    """Put a job back in the state a worker that died mid-run leaves behind: running,
    held by a worker that no longer beats. The recovery sweeper takes it from there."""
    gone = "cpu@gone:0"
    fields: dict[str, str | int | float] = {"status": "running", "owner": gone,
                                            "lease": "gone", "run_at": time.time() - 60}
    if attempts is not None:
        fields["attempts"] = attempts
    client.hset(f"chatq:job:{job_id}", mapping=fields)
    client.hset("chatq:running", job_id, gone)


# The llama.cpp load options a CPU build can do, as registry lines (with n_batch 300 and
# n_ubatch 100, 1 and 2 threads, 8-bit KV, RoPE base 100000): the unit and the end-to-end
# tests of the registry's options load the demo model with them.
CPU_LOAD_OPTIONS = """\
n_batch = 300
n_ubatch = 100
n_threads = 1
n_threads_batch = 2
flash_attn = true
type_k = "q8_0"
type_v = "q8_0"
offload_kqv = true
use_mmap = false
use_mlock = false
rope_scaling_type = "linear"
rope_freq_base = 100000.0
"""
