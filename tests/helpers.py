"""Small helpers the tests share: submitting, polling, reading event streams."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

TERMINAL = {"succeeded", "failed", "cancelled"}


def hi(text: str = "Say hello in one short sentence.", **fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}], **fields}


def submit(client: httpx.Client, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body,
                           headers={"Prefer": "respond-async", **headers})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def wait_done(client: httpx.Client, job_id: str, timeout: float = 60) -> dict[str, Any]:
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
