"""Benchmark: the batching llama engine alone against llama-cpp-python called directly.

Same prompts, greedy, same ``max_tokens`` (128), same threads (2), never
overlapping (the engine in this process, llama-cpp-python in a child process):

- 1 job: llama-cpp-python ``create_chat_completion(stream=True)`` and one job
  through :class:`workers.llama.LlamaEngine`: time to first token and
  per-stream decode tokens/s (tokens after the first / time since the first).
- 4 jobs at once through the engine: the largest time to first token, per-stream
  decode tokens/s, and aggregate tokens/s (all tokens / wall time from submit to
  the last token), against the 1-job aggregate figure. The direct library runs
  one job at a time, so its "4 jobs" figure is the 4 prompts one after another.

    python -m ops.bench_engine --runs 5

Targets (issue 10): 1 job >= 0.95 x direct tokens/s, about the same TTFT;
4 jobs aggregate >= 1.4 x the 1-job figure, every first token within ~0.5 s.
The figures are medians over runs; on a shared machine they are noisy. Both
sides reuse what the prompts share, the chat template's head: llama-cpp-python
from its previous call, the engine from the stream it read at load. The direct
``Llama`` is loaded as ``make bench`` loads it (the engine's threads, flash
attention, the model's load options), in a process of its own.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from llama_cpp import Llama

from ops.bench import WARM_UP, load_direct
from ops.bench_client import Timed
from shared.registry import ModelSpec, Registry
from shared.schemas import SamplingParams
from shared.settings import load_settings
from workers.engine import GenRequest
from workers.llama import LlamaEngine

PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step, in detail.",
    "List as many animals as you can, one per line.",
]


@dataclass
class Run(Timed):
    started: float
    first: float = 0.0
    last: float = 0.0
    tokens: int = 0

    def see(self, tokens: int, has_text: bool) -> None:
        now = time.perf_counter()
        self.tokens += tokens
        if has_text:
            self.first = self.first or now
            self.last = now


def aggregate(runs: list[Run]) -> float:
    """All tokens over the wall time from the first submit to the last token."""
    span = max(r.last for r in runs) - min(r.started for r in runs)
    return sum(r.tokens for r in runs) / span if span > 0 else 0.0


def direct(llm: Llama, prompt: str, max_tokens: int) -> Run:
    run = Run(time.perf_counter())
    chunks = llm.create_chat_completion(
        [{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
        stream=True)
    for chunk in chunks:
        if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
            run.see(1, True)
    return run


def direct_process(conn: Connection, spec: ModelSpec, path: Path, threads: int) -> None:
    """The direct side, in a process of its own: in one process, while a thread that
    had computed with llama.cpp lasted beside the engine's scheduler thread, OpenMP
    kept a team of threads for each and they ran at about half speed."""
    llm = load_direct(spec, path, threads)
    try:
        while (asked := conn.recv()) is not None:
            conn.send(direct(llm, *asked))
    finally:
        llm.close()


class Direct:
    """llama-cpp-python direct, asked one prompt at a time in its own process."""

    def __init__(self, spec: ModelSpec, path: Path, threads: int) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.conn, child = spawn.Pipe()
        self.proc = spawn.Process(target=direct_process, args=(child, spec, path, threads),
                                  daemon=True)
        self.proc.start()

    def __call__(self, prompt: str, max_tokens: int) -> Run:
        self.conn.send((prompt, max_tokens))
        run: Run = self.conn.recv()
        return run

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(30)


def request(engine: LlamaEngine, prompt: str, max_tokens: int) -> GenRequest:
    messages = [{"role": "user", "content": prompt}]
    params = SamplingParams(max_tokens=max_tokens, temperature=0, top_p=1)
    return GenRequest(job_id=f"bench-{prompt[:12]}", messages=messages,
                      prompt=engine.prompter.render(messages), params=params,
                      deadline=time.monotonic() + 600)


def through_engine(engine: LlamaEngine, prompt: str, max_tokens: int, run: Run) -> Run:
    req = request(engine, prompt, max_tokens)  # rendering is the task layer's, not timed
    run.started = time.perf_counter()
    for piece in engine.submit(req).pieces(0.05):
        if piece is not None:
            run.see(piece.tokens, bool(piece.text))
    return run


def engine_together(engine: LlamaEngine, prompts: list[str], max_tokens: int) -> list[Run]:
    runs = [Run(0.0) for _ in prompts]
    threads = [threading.Thread(target=through_engine, args=(engine, p, max_tokens, r))
               for p, r in zip(prompts, runs, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return runs


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def report(d1: list[Run], e1: list[Run], d4: list[list[Run]], e4: list[list[Run]]) -> None:
    d_tps, e_tps = med([r.rate for r in d1]), med([r.rate for r in e1])
    d_ttft, e_ttft = med([r.ttft_ms for r in d1]), med([r.ttft_ms for r in e1])
    one = med([aggregate([r]) for r in e1])
    four = med([aggregate(rs) for rs in e4])
    serial = med([sum(r.tokens for r in rs) / sum(r.last - r.started for r in rs)
                  for rs in d4])  # its calls alternate with the engine's: their own time
    ttft4 = med([max(r.ttft_ms for r in rs) for rs in e4])
    stream4 = med([r.rate for rs in e4 for r in rs])
    print(f"  1 job   direct  TTFT {d_ttft:7.1f} ms  {d_tps:6.1f} tok/s per stream"
          f"  (tokens median {med([r.tokens for r in d1]):.0f})")
    print(f"  1 job   engine  TTFT {e_ttft:7.1f} ms  {e_tps:6.1f} tok/s per stream"
          f"  (tokens median {med([r.tokens for r in e1]):.0f})")
    print(f"  4 jobs  engine  max TTFT {ttft4:7.1f} ms  {stream4:6.1f} tok/s per stream"
          f"  {four:6.1f} tok/s aggregate")
    print(f"  4 jobs  direct, one after another: {serial:6.1f} tok/s aggregate")
    ratio1 = e_tps / d_tps if d_tps else 0.0
    ratio4 = four / one if one else 0.0
    print(f"  engine/direct per-stream tokens/s (1 job): {ratio1:.3f}  (target >= 0.95)")
    print(f"  engine TTFT - direct TTFT (1 job): {e_ttft - d_ttft:+.1f} ms  (about the same)")
    print(f"  engine 4-job aggregate / 1-job aggregate ({one:.1f} tok/s): {ratio4:.3f}"
          f"  (target >= 1.4)")
    print(f"  largest first-token time with 4 jobs: {ttft4:.0f} ms  (target ~500 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="rounds (each runs every prompt)")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    registry = Registry.load(load_settings().registry)
    spec = registry.for_queue("cpu")
    path = registry.gguf_path(spec)
    ask_direct = Direct(spec, path, args.threads)
    engine = LlamaEngine(spec, path, args.threads)
    try:
        ask_direct(WARM_UP, 8)  # warm-up, both paths
        through_engine(engine, WARM_UP, 8, Run(0.0))
        d1: list[Run] = []
        e1: list[Run] = []
        d4: list[list[Run]] = []
        e4: list[list[Run]] = []
        for _ in range(args.runs):
            round_direct = []
            for prompt in PROMPTS:
                round_direct.append(ask_direct(prompt, args.max_tokens))
                e1.append(through_engine(engine, prompt, args.max_tokens, Run(0.0)))
            d1 += round_direct
            d4.append(round_direct)
            e4.append(engine_together(engine, PROMPTS, args.max_tokens))
    finally:
        engine.close()
        ask_direct.close()
    print(f"\nllama engine vs direct llama-cpp-python — model {spec.name}, greedy, "
          f"max_tokens {args.max_tokens}, {args.threads} threads, {len(PROMPTS)} prompts x "
          f"{args.runs} runs (medians)")
    report(d1, e1, d4, e4)


if __name__ == "__main__":
    main()
