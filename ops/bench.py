"""``make bench``: chatq against llama-cpp-python called directly, in one run.

The same prompts and parameters (greedy, fixed ``max_tokens``) go

1. to one caller, in pairs: each prompt directly through llama-cpp-python in this
   process (a ``Llama`` object generating for one sequence) and through a local
   chatq stack (its own Redis, store, worker and API) by one streaming caller of
   ``/v1/chat/completions``, one after the other, the order alternating from pair
   to pair,
2. through the same stack by several callers at once (``--callers``, default 4),

in ``--runs`` passes of 1 then 2, so a drift in the machine's speed (seen here:
10 % within a minute) weighs on every side alike; never two at a time, so they
never share the CPU (the direct ``Llama`` stays loaded, idle, while chatq runs).
It prints first-token latency (p50/p95), per-stream and aggregate tokens/s, and
the ratios the issues set as targets:

- 1 caller: chatq per-stream tokens/s >= 0.95 x direct; added first-token
  latency (p50) <= 20 ms;
- N callers: aggregate tokens/s >= 1.4 x chatq's own 1-caller aggregate;
  first-token p50 <= 500 ms.

Per-stream tokens/s is (tokens - 1) / (last token - first token). Aggregate
tokens/s is all tokens of a round over its time: for several callers the
wall-clock time from the first request to the last answer of each pass; for one caller the
sum of its requests' times, each from the request to the end of its response
(the direct calls in between are not chatq's time). Both sides run llama.cpp
with the engine's threads (the registry's ``n_threads``, else
``CHATQ_WORKER__N_THREADS``, else every core this process may use).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
from llama_cpp import Llama

from ops.devstack import Stack, free_port, wait_worker
from shared.registry import ModelSpec, Registry
from shared.settings import DEV_API_KEY, load_settings
from workers.llama_params import llama_threads

WARM_UP = "Say hello."  # not one of PROMPTS: a warm-up shares only the template's head
PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step, in detail.",
    "List as many colours as you can, one per line.",
]


@dataclass
class Stream:
    started: float
    first: float
    last: float
    tokens: int
    ended: float  # the response (or the direct call) ended

    @property
    def span(self) -> float:
        return self.ended - self.started

    @property
    def ttft_ms(self) -> float:
        return (self.first - self.started) * 1000

    @property
    def rate(self) -> float:
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


@dataclass
class Round:
    name: str
    callers: int
    streams: list[Stream]
    wall_s: float

    @property
    def aggregate(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall_s

    def ttft(self, q: int) -> float:
        values = sorted(s.ttft_ms for s in self.streams)
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(
            values) > 1 else values[0]

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.streams)

    def line(self) -> str:
        return (f"  {self.name:<22} callers {self.callers}  first token p50 "
                f"{self.ttft(50):7.1f} ms  p95 {self.ttft(95):7.1f} ms  per-stream "
                f"{self.rate:6.1f} tok/s  aggregate {self.aggregate:6.1f} tok/s  "
                f"({len(self.streams)} streams, "
                f"{statistics.median(s.tokens for s in self.streams):.0f} tokens median)")


def sequential(name: str, streams: list[Stream]) -> Round:
    """One caller's streams, one after another: its time is the sum of theirs."""
    return Round(name, 1, streams, sum(s.span for s in streams))


def direct(llm: Llama, prompt: str, max_tokens: int, fresh: bool = False) -> Stream:
    """One streamed answer, as llama-cpp-python's ``Llama`` gives it by default: reusing
    the KV of the tokens the prompt shares with its previous call (for these prompts, the
    chat template's head: its system prompt and the user turn's header, which chatq's
    engine also reads once). ``fresh``: from an empty KV cache instead."""
    if fresh:
        llm.reset()
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    chunks = llm.create_chat_completion([{"role": "user", "content": prompt}],
                                        max_tokens=max_tokens, temperature=0, stream=True)
    for chunk in chunks:
        if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return Stream(started, first, last, tokens, time.perf_counter())


def _chunks(response: httpx.Response) -> Iterator[dict[str, object]]:
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def through_chatq(client: httpx.Client, prompt: str, max_tokens: int) -> Stream:
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for chunk in _chunks(response):
            choices: list[dict[str, dict[str, str]]] = chunk["choices"]  # type: ignore[assignment]
            if choices and choices[0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                tokens = int(usage["completion_tokens"])
    return Stream(started, first, last, tokens, time.perf_counter())


def run_round(name: str, callers: int, base_url: str, prompts: list[str],
              max_tokens: int) -> Round:
    """``callers`` clients start together; each runs its share of the prompts in turn.
    The round's time is the wall clock, first request to last response."""
    streams: list[Stream] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers)

    def caller(mine: list[str]) -> None:
        with httpx.Client(base_url=base_url, timeout=300,
                          headers={"Authorization": f"Bearer {DEV_API_KEY}"}) as client:
            barrier.wait()
            for prompt in mine:
                result = through_chatq(client, prompt, max_tokens)
                with lock:
                    streams.append(result)

    threads = [threading.Thread(target=caller, args=(prompts[i::callers],))
               for i in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Round(name, callers, streams, time.perf_counter() - started)


def start_stack(root: Path) -> tuple[Stack, str]:
    stack = Stack(root)
    stack.env["CHATQ_REDIS_URL"] = stack.start_redis()
    stack.env["CHATQ_MONGO_URL"] = stack.start_mongo()
    worker = stack.start_worker("cpu")
    wait_worker(stack.env["CHATQ_REDIS_URL"], "cpu", proc=worker)
    port = free_port()
    stack.start_api(port)
    return stack, f"http://127.0.0.1:{port}"


def load_direct(spec: ModelSpec, path: Path, n_threads: int | None) -> Llama:
    """llama-cpp-python with the model's load options and flash attention as the engine
    runs it (llama.cpp's "auto": on where the build supports it, as here)."""
    # llama-cpp-python's own default is half the cores for generation: give it the
    # engine's threads instead.
    threads = llama_threads(spec, n_threads)
    options = {"n_threads": threads, "n_threads_batch": threads, "flash_attn": True,
               **spec.llama_kwargs()}
    return Llama(model_path=str(path), verbose=False, **options)


def direct_round(llm: Llama, name: str, prompts: list[str], max_tokens: int,
                 fresh: bool) -> Round:
    """The prompts one after another (for information: ``fresh``, from an empty KV cache
    each)."""
    direct(llm, WARM_UP, 8, fresh)
    return sequential(name, [direct(llm, p, max_tokens, fresh) for p in prompts])


def paired_pass(llm: Llama, client: httpx.Client, max_tokens: int, n: int, *,
                direct_streams: list[Stream], chatq_streams: list[Stream]) -> None:
    """Each of ``PROMPTS`` directly and through chatq by one caller, one right after the
    other; which goes first alternates from pair to pair, and from pass ``n`` to the
    next (so each prompt is run both ways round)."""
    for i, prompt in enumerate(PROMPTS):
        direct_first = (i + n) % 2 == 0
        if direct_first:
            direct_streams.append(direct(llm, prompt, max_tokens))
        chatq_streams.append(through_chatq(client, prompt, max_tokens))
        if not direct_first:
            direct_streams.append(direct(llm, prompt, max_tokens))


def rounds(llm: Llama, base_url: str, runs: int, callers: int,
           max_tokens: int) -> tuple[Round, Round, Round]:
    """``runs`` passes, each a paired pass (one caller) then a pass of ``callers`` callers
    (each prompt ``callers`` times), so a drift in the machine's speed weighs on every
    round alike. The several callers' time is the sum of their passes' wall clocks."""
    direct_streams: list[Stream] = []
    chatq_streams: list[Stream] = []
    many_streams: list[Stream] = []
    many_s = 0.0
    many_prompts = [p for p in PROMPTS for _ in range(callers)]
    with httpx.Client(base_url=base_url, timeout=300,
                      headers={"Authorization": f"Bearer {DEV_API_KEY}"}) as client:
        direct(llm, WARM_UP, 8)
        through_chatq(client, WARM_UP, 8)
        for n in range(runs):
            paired_pass(llm, client, max_tokens, n, direct_streams=direct_streams,
                        chatq_streams=chatq_streams)
            many = run_round("", callers, base_url, many_prompts, max_tokens)
            many_streams += many.streams
            many_s += many.wall_s
    return (sequential("llama-cpp-python direct", direct_streams),
            sequential("chatq, 1 caller", chatq_streams),
            Round(f"chatq, {callers} callers", callers, many_streams, many_s))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def summary(d: Round, one: Round, many: Round) -> None:
    ratio = one.rate / d.rate if d.rate else 0.0
    added = one.ttft(50) - d.ttft(50)
    scale = many.aggregate / one.aggregate if one.aggregate else 0.0
    print(f"  1 caller:  per-stream tokens/s chatq/direct {ratio:.3f} (target >= 0.95: "
          f"{verdict(ratio >= 0.95)}); added first-token latency p50 {added:+.1f} ms "
          f"(target <= 20 ms: {verdict(added <= 20)})")
    print(f"  {many.callers} callers: aggregate tokens/s {scale:.2f}x chatq's 1-caller "
          f"aggregate (target >= 1.4: {verdict(scale >= 1.4)}); first-token p50 "
          f"{many.ttft(50):.0f} ms (target <= 500 ms: {verdict(many.ttft(50) <= 500)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repetitions of the prompt set")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--callers", type=int, default=4)
    args = parser.parse_args()

    settings = load_settings()
    registry = Registry.load(settings.registry)
    spec = registry.for_queue(settings.worker.queue)
    prompts = PROMPTS * args.runs
    path = registry.gguf_path(spec)
    n_threads = settings.worker.n_threads
    llm = load_direct(spec, path, n_threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            stack, base_url = start_stack(Path(tmp))
            try:
                d, one, many = rounds(llm, base_url, args.runs, args.callers,
                                      args.max_tokens)
            finally:
                stack.stop()
        reset = direct_round(llm, "direct, KV reset per call", prompts, args.max_tokens,
                             fresh=True)
    finally:
        llm.close()
    print(f"\nchatq vs llama-cpp-python direct: model {spec.name}, slots {spec.slots}, "
          f"max_tokens {args.max_tokens}, greedy, "
          f"threads {llama_threads(spec, settings.worker.n_threads)} on both sides, "
          f"flash attention")
    for r in (d, one, many, reset):
        print(r.line())
    summary(d, one, many)
    print("  (direct: llama-cpp-python's Llama as it is, reusing the KV of what a prompt shares "
          "with its previous call, here the chat template's head, which chatq's engine reads "
          "once at load; its calls alternate with chatq's 1-caller requests; 'KV reset per "
          "call' reads every prompt whole, for information)")

if __name__ == "__main__":
    main()
