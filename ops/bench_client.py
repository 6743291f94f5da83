"""The benchmark's HTTP client: one streamed ``/v1/chat/completions`` request, timed.

It talks to chatq and to llama-server alike (both speak OpenAI's streaming format;
llama-server ignores the bearer key), so both sides are measured by the same code.
What must hold, and why:

- The clock starts before the request is sent and stops when the response has
  ended, so a side's queueing, prompt reading and streaming all count.
- The first token is the first chunk carrying content; an answer without any (the
  model ended at once) counts its end as its first token, so a time is never
  negative or missing.
- The token count is the response's ``usage.completion_tokens``
  (``stream_options.include_usage``), as the side counted them, not text chunks:
  chatq coalesces several tokens into one chunk.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from shared.settings import DEV_API_KEY

Messages = list[dict[str, str]]


class Timed:
    """Time to first token and decode rate of one stream (a chatq or llama-server
    response here, a direct engine call in :mod:`ops.bench_engine`)."""

    started: float
    first: float
    last: float
    tokens: int

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.started) * 1000

    @property
    def rate(self) -> float:
        """Per-stream decode tokens/s (after the first token)."""
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


@dataclass
class Stream(Timed):
    started: float
    first: float
    last: float
    tokens: int
    ended: float  # the response (or the direct call) ended
    text: str = ""
    prompt_tokens: int = 0

    @property
    def span(self) -> float:
        return self.ended - self.started

def client(base_url: str, timeout: float = 600) -> httpx.Client:
    """A connection per request, on every side alike: llama-server's HTTP library closes a
    keep-alive connection after its fifth request, and a client reusing it then fails
    with "Server disconnected without sending a response" (seen in the 4-caller and
    8-conversation rounds)."""
    return httpx.Client(base_url=base_url, timeout=timeout,
                        limits=httpx.Limits(max_keepalive_connections=0),
                        headers={"Authorization": f"Bearer {DEV_API_KEY}"})


def _chunks(response: httpx.Response) -> Iterator[dict[str, Any]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def stream_chat(http: httpx.Client, messages: Messages, max_tokens: int) -> Stream:
    """One greedy streamed answer to ``messages``, timed."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = 0.0
    text: list[str] = []
    usage: dict[str, Any] = {}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for chunk in _chunks(response):
            choices = chunk.get("choices") or []
            content = choices[0].get("delta", {}).get("content") if choices else None
            if content:
                last = time.perf_counter()
                first = first or last
                text.append(content)
            usage = chunk.get("usage") or usage
    ended = time.perf_counter()
    return Stream(started, first or ended, last or ended, int(usage.get("completion_tokens", 0)),
                  ended, "".join(text), int(usage.get("prompt_tokens", 0)))


def ask(http: httpx.Client, prompt: str, max_tokens: int) -> Stream:
    """One user message, no history."""
    return stream_chat(http, [{"role": "user", "content": prompt}], max_tokens)


def run_threads(threads: list[threading.Thread]) -> float:
    """Start the callers together and wait for all; the seconds they took."""
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started
