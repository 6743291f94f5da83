"""Benchmark: chatq's SSE stream against llama-cpp-python called directly.

Runs the same prompts with the same parameters (greedy, fixed max_tokens)
through a local chatq stack (its own Redis, store, worker and API) and through
llama-cpp-python in this process, one after the other so they never share the
CPU, and prints time to first token and tokens/s for both and their ratio.

    make bench                      # or: python -m ops.bench_stream --runs 5

Targets (issue 3): stream tokens/s >= 0.95 x direct; added TTFT < 20 ms (median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from llama_cpp import Llama

from ops.devstack import Stack, free_port, wait_worker
from shared.registry import Registry
from shared.settings import DEV_API_KEY, load_settings

PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step, in detail.",
]


@dataclass
class Run:
    ttft_ms: float
    tokens: int
    tokens_per_s: float


def rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0


def direct(llm: Llama, prompt: str, max_tokens: int) -> Run:
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    chunks = llm.create_chat_completion(
        [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True)
    for chunk in chunks:
        if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
            last = time.perf_counter()
            first = first or last
            tokens += 1
    return Run((first - started) * 1000, tokens, rate(tokens, first, last))


def through_chatq(client: httpx.Client, prompt: str, max_tokens: int) -> Run:
    started = time.perf_counter()
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0}
    job = client.post("/v1/jobs", json=body, headers={"Prefer": "respond-async"}).json()
    first = last = 0.0
    final: dict[str, object] = {}
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "token":
                last = time.perf_counter()
                first = first or last
            elif line.startswith("data:") and event in ("done", "error"):
                final = json.loads(line[5:])
    usage: dict[str, int] = final.get("usage") or {}  # type: ignore[assignment]
    tokens = int(usage.get("completion_tokens", 0))
    return Run((first - started) * 1000, tokens, rate(tokens, first, last))


def start_stack(root: Path) -> tuple[Stack, str]:
    stack = Stack(root)
    stack.env["CHATQ_REDIS_URL"] = stack.start_redis()
    stack.env["CHATQ_MONGO_URL"] = stack.start_mongo()
    worker = stack.start_worker("cpu")
    wait_worker(stack.env["CHATQ_REDIS_URL"], "cpu", proc=worker)
    port = free_port()
    stack.start_api(port)
    return stack, f"http://127.0.0.1:{port}"


def summarise(name: str, runs: list[Run]) -> tuple[float, float]:
    ttft = statistics.median(r.ttft_ms for r in runs)
    tps = statistics.median(r.tokens_per_s for r in runs)
    tokens = statistics.median(r.tokens for r in runs)
    print(f"  {name:<8} TTFT median {ttft:8.1f} ms   tokens/s median {tps:7.1f}   "
          f"tokens median {tokens:.0f}   (n={len(runs)})")
    return ttft, tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="repetitions per prompt")
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    settings = load_settings()
    registry = Registry.load(settings.registry)
    spec = registry.for_queue("cpu")
    llm = Llama(model_path=str(registry.gguf_path(spec)), n_ctx=spec.context_size,
                n_gpu_layers=spec.gpu_layers, n_threads=settings.worker.n_threads,
                verbose=False)
    with tempfile.TemporaryDirectory() as tmp:
        stack, base_url = start_stack(Path(tmp))
        try:
            auth = {"Authorization": f"Bearer {DEV_API_KEY}"}
            with httpx.Client(base_url=base_url, timeout=120, headers=auth) as client:
                direct(llm, PROMPTS[0], 8)  # warm-up, both paths
                through_chatq(client, PROMPTS[0], 8)
                d_runs: list[Run] = []
                c_runs: list[Run] = []
                for _ in range(args.runs):
                    for prompt in PROMPTS:
                        d_runs.append(direct(llm, prompt, args.max_tokens))
                        c_runs.append(through_chatq(client, prompt, args.max_tokens))
        finally:
            stack.stop()
    print(f"\nchatq SSE vs direct llama-cpp-python — model {spec.name}, "
          f"max_tokens {args.max_tokens}, greedy, {len(PROMPTS)} prompts x {args.runs} runs")
    d_ttft, d_tps = summarise("direct", d_runs)
    c_ttft, c_tps = summarise("chatq", c_runs)
    ratio = c_tps / d_tps if d_tps else 0.0
    added = c_ttft - d_ttft
    print(f"  tokens/s ratio chatq/direct: {ratio:.3f}   (target >= 0.95: "
          f"{'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"  added TTFT (median chatq - median direct): {added:.1f} ms   (target < 20 ms: "
          f"{'met' if added < 20 else 'NOT met'})")


if __name__ == "__main__":
    main()
