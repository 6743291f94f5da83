"""``make bench``'s batch scenario: chatq's Batch API against the same requests sent one
by one, and what a batch costs an interactive caller.

``--lines`` (default 200) short chat requests (greedy, ``--line-tokens`` tokens at most,
default 8; each a question of its own, so no answer is another's):

1. **idle**: ``--probes`` streaming requests of one interactive caller, one after the
   other, on an idle queue: their first-token latency;
2. **batch**: the requests as one JSONL file through ``/v1/files`` and ``/v1/batches``,
   polled until the batch ends: lines per second, from the upload to the end; while the
   batch runs, the same interactive caller's streaming requests, one after the other:
   their first-token latency (only those that ended before the batch did);
3. **one by one**: the same requests, each a ``/v1/chat/completions`` request, by
   ``--callers`` (4) callers at once through chatq, then through llama-server when the
   bench runs one: lines per second, first request to last answer.

What must hold, and why:

- **Deterministic**: the same arguments give the same lines and questions.
- **A batch line is the request a caller would send**: the same message, ``max_tokens``
  and ``temperature`` 0 in the batch and one by one (a line names the model, the
  stack's only one, which a caller one by one gets by default), so the rates compare
  the paths and not the work.
- **Lines per second count the whole trip**: the batch's time runs from the upload's
  start to the poll that sees it ended (validation, feeding, writing the output file);
  one by one, from the first request to the last answer.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from ops.bench_client import Stream, ask, client, run_threads
from ops.bench_stats import percentile

ENDED = ("completed", "failed", "expired", "cancelled")
SUBJECTS = ["a river", "a mountain", "the sea", "a forest", "a city", "the moon", "a desert",
            "a garden", "a bridge", "a library", "a train", "a lighthouse", "a market",
            "an island", "a castle", "a volcano", "a meadow", "a harbour", "a glacier",
            "a village"]
ASKS = ["Name one colour of {}.", "Give one word for {}.", "Say one fact about {}.",
        "Name a sound of {}.", "Name an animal near {}.", "Give {} a short name.",
        "Name a smell of {}.", "Say where {} might be.", "Name a season for {}.",
        "Give one adjective for {}."]
POLL_S = 0.2  # between two reads of the batch (a poll, not a wait for a duration)


def question(i: int) -> str:
    """The ``i``-th question: every one of the first 200 differs."""
    return ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])


def request_body(i: int, model: str, max_tokens: int) -> dict[str, Any]:
    """The chat request of line ``i``, as a batch line carries it and as a caller sends it."""
    return {"model": model, "messages": [{"role": "user", "content": question(i)}],
            "max_tokens": max_tokens, "temperature": 0}


def batch_file(lines: int, model: str, max_tokens: int) -> bytes:
    """The batch's input file: one ``/v1/chat/completions`` request a line."""
    return b"".join(json.dumps({"custom_id": f"line-{i}", "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": request_body(i, model, max_tokens)}).encode() + b"\n"
                    for i in range(lines))


def per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


@dataclass
class BatchRun:
    """A batch's end as polled, and the interactive streams that ran meanwhile."""

    status: str
    counts: dict[str, int]
    seconds: float
    probes: list[Stream] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return per_second(self.counts.get("completed", 0), self.seconds)


def create_batch(http: httpx.Client, data: bytes) -> str:
    """Upload the file and create a batch of it: the batch's id."""
    uploaded = http.post("/v1/files", files={"file": ("bench.jsonl", data)},
                         data={"purpose": "batch"})
    uploaded.raise_for_status()
    created = http.post("/v1/batches", json={
        "input_file_id": uploaded.json()["id"], "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})
    created.raise_for_status()
    return str(created.json()["id"])


def probe_while(base_url: str, running: threading.Event, max_tokens: int,
                out: list[Stream]) -> None:
    """One interactive caller's streaming requests, one after the other, while the batch
    runs; a request that ends after the batch did is not kept (it did not compete)."""
    with client(base_url, timeout=600) as http:
        n = 0
        while running.is_set():
            stream = ask(http, question(10_000 + n), max_tokens)
            n += 1
            if running.is_set():
                out.append(stream)


def run_batch(base_url: str, data: bytes, probe_tokens: int) -> BatchRun:
    """The batch from upload to its end, with the interactive caller beside it from the
    moment the batch is in progress."""
    probes: list[Stream] = []
    running = threading.Event()
    prober = threading.Thread(target=probe_while,
                              args=(base_url, running, probe_tokens, probes))
    with client(base_url, timeout=600) as http:
        started = time.perf_counter()
        batch_id = create_batch(http, data)
        while True:
            batch = http.get(f"/v1/batches/{batch_id}").json()
            if batch["status"] == "in_progress" and not running.is_set():
                running.set()
                prober.start()
            if batch["status"] in ENDED:
                break
            time.sleep(POLL_S)
        seconds = time.perf_counter() - started
    running.clear()
    if prober.is_alive():
        prober.join()
    return BatchRun(batch["status"], dict(batch.get("request_counts") or {}), seconds, probes)


def one_by_one(base_url: str, callers: int, lines: int, max_tokens: int
               ) -> tuple[float, int]:
    """The lines as chat requests, ``callers`` at once: (seconds, answers)."""
    done: list[Stream] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers)

    def caller(mine: range) -> None:
        with client(base_url, timeout=600) as http:
            barrier.wait()
            for i in mine:
                stream = ask(http, question(i), max_tokens)
                with lock:
                    done.append(stream)

    threads = [threading.Thread(target=caller, args=(range(c, lines, callers),))
               for c in range(callers)]
    return run_threads(threads), len(done)


def idle_probes(base_url: str, count: int, max_tokens: int) -> list[Stream]:
    with client(base_url, timeout=600) as http:
        return [ask(http, question(20_000 + n), max_tokens) for n in range(count)]


def ttft_line(name: str, streams: list[Stream]) -> str:
    if not streams:
        return f"  {name:<40} no request ran"
    ttfts = [s.ttft_ms for s in streams]
    return (f"  {name:<40} first token p50 {percentile(ttfts, 50):7.1f} ms  p95 "
            f"{percentile(ttfts, 95):7.1f} ms  max {max(ttfts):7.1f} ms  "
            f"({len(streams)} requests, {statistics.median(s.tokens for s in streams):.0f} "
            "tokens median)")


def rate_line(name: str, count: int, seconds: float) -> str:
    return (f"  {name:<40} {per_second(count, seconds):7.2f} lines/s  ({count} lines in "
            f"{seconds:.1f} s)")
