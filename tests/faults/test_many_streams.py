"""One API process serves 1,000 concurrent event streams — on one job, and on 1,000
jobs — and every client gets the identical, complete text. Redis connections are
bounded and waited for, never a reason to cut a stream. The same on the OpenAI
stream path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.faults.conftest import report, rss_peak_mb
from tests.helpers import LONG, SseStream, hi, parse_sse, submit, wait_done

CLIENTS = 1000
ENV = {"CHATQ_API__MAX_QUEUE_DEPTH": "2000", "CHATQ_API__MAX_TENANT_QUEUE_DEPTH": "2000",
       "CHATQ_API__REDIS_MAX_CONNECTIONS": "32"}


def async_client(chatq: Chatq) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=chatq.base_url, timeout=httpx.Timeout(600, connect=60),
        headers={"Authorization": f"Bearer {DEV_API_KEY}"},
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=0))


async def collect(client: httpx.AsyncClient, job_id: str) -> SseStream:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        lines = [line async for line in response.aiter_lines()]
    return parse_sse(lines, SseStream())


def check(stream: SseStream, final: dict[str, Any]) -> None:
    assert stream.last.event == "done", stream.events[-3:]
    assert stream.text == final["output"]
    seqs = [e.id for e in stream.tokens]
    assert seqs == list(range(1, len(seqs) + 1))


def test_a_thousand_clients_on_one_job(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env=ENV)
    with stack.client() as c:
        # 40 tokens: every one of them goes to 1,000 clients; more add time, not coverage.
        job = submit(c, hi(LONG, max_tokens=40, temperature=0))

    async def main() -> list[SseStream]:
        async with async_client(stack) as client:
            return await asyncio.gather(*(collect(client, job["id"]) for _ in range(CLIENTS)))

    started = time.monotonic()
    streams = asyncio.run(main())
    took = time.monotonic() - started
    with stack.client() as c:
        final = wait_done(c, job["id"])
    assert final["status"] == "succeeded"
    for stream in streams:
        check(stream, final)
    report(f"{CLIENTS} SSE clients on one job", clients_complete=len(streams), seconds=took,
           api_peak_rss_mb=rss_peak_mb(stack.api.popen.pid))


def test_a_thousand_clients_on_a_thousand_jobs(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env=ENV)

    async def one(client: httpx.AsyncClient, i: int) -> tuple[SseStream, dict[str, Any]]:
        # One token per job: the test is about 1,000 streams at once, not generation.
        created = await client.post("/v1/jobs", json=hi(f"Say the number {i}.", max_tokens=1),
                                    headers={"Prefer": "respond-async"})
        assert created.status_code == 202, created.text
        stream = await collect(client, created.json()["id"])
        final = (await client.get(f"/v1/jobs/{created.json()['id']}")).json()
        return stream, final

    async def main() -> list[tuple[SseStream, dict[str, Any]]]:
        async with async_client(stack) as client:
            return await asyncio.gather(*(one(client, i) for i in range(CLIENTS)))

    started = time.monotonic()
    results = asyncio.run(main())
    took = time.monotonic() - started
    for stream, final in results:
        assert final["status"] == "succeeded"
        check(stream, final)
    report(f"{CLIENTS} SSE clients on {CLIENTS} jobs", clients_complete=len(results),
           seconds=took, api_peak_rss_mb=rss_peak_mb(stack.api.popen.pid))


def test_a_thousand_openai_streams(make_stack: Callable[..., Chatq]) -> None:
    stack = make_stack(env=ENV)
    body = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}

    async def one(client: httpx.AsyncClient) -> tuple[str, int]:
        text, usage = "", -1
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = httpx.Response(200, content=line[6:]).json()
                assert "error" not in chunk, chunk
                if chunk["choices"]:
                    text += chunk["choices"][0]["delta"].get("content") or ""
                elif chunk.get("usage"):
                    usage = chunk["usage"]["completion_tokens"]
        return text, usage

    async def main() -> list[tuple[str, int]]:
        async with async_client(stack) as client:
            return await asyncio.gather(*(one(client) for _ in range(CLIENTS)))

    started = time.monotonic()
    results = asyncio.run(main())
    took = time.monotonic() - started
    assert all(text and 1 <= usage <= 3 for text, usage in results)
    assert len({text for text, _ in results}) == 1  # greedy: the same answer each time
    report(f"{CLIENTS} OpenAI streams", clients_complete=len(results), seconds=took,
           api_peak_rss_mb=rss_peak_mb(stack.api.popen.pid))
