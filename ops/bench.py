"""``make bench``: chatq against its peers, llama-cpp-python called directly and
llama.cpp's own ``llama-server``, in one run on one machine.

Scenarios (``--scenario``, default both):

- **single** (single-turn prompts, greedy, fixed ``max_tokens``):

  1. one caller: each prompt directly through llama-cpp-python in this process
     (a ``Llama`` object generating for one sequence), through a local chatq stack
     (its own Redis, store, worker and API) and through llama-server (when
     ``--llama-server`` names its binary), each by one streaming caller of
     ``/v1/chat/completions``, one right after the other, the side that goes first
     rotating from prompt to prompt and from pass to pass;
  2. several callers at once (``--callers``, default 4) on chatq and on
     llama-server, which goes first alternating from pass to pass;

  in ``--runs`` passes of 1 then 2, so a drift in the machine's speed (seen here:
  10 % within a minute) weighs on every side alike; never two sides at a time, so
  they never share the CPU (the idle sides stay loaded). It prints first-token
  latency (p50/p95), per-stream and aggregate tokens/s, the batching issue's
  targets (1 caller: chatq per-stream tokens/s >= 0.95 x direct, added first-token
  latency p50 <= 20 ms; N callers: aggregate >= 1.4 x chatq's own 1-caller
  aggregate, first token p50 <= 500 ms) and chatq's ratios to each peer side by
  side (:func:`ops.bench_stats.ratio_table`, with the engine issue's targets).

- **multiturn**: conversations whose client resends the whole history each turn
  (:mod:`ops.bench_multiturn`), on chatq and llama-server.

- **batch** (not run by default: ``--scenario batch``): ``--lines`` short chat requests
  through chatq's Batch API against the same requests one by one by ``--callers``
  callers (chatq, and llama-server), and an interactive caller's first-token latency
  while the batch runs against an idle queue (:mod:`ops.bench_batch`).

Per-stream tokens/s is (tokens - 1) / (last token - first token). Aggregate
tokens/s is all tokens of a round over its time: for several callers the
wall-clock time from the first request to the last answer of each pass; for one caller the
sum of its requests' times, each from the request to the end of its response
(the other sides' calls in between are not its time). Every side runs llama.cpp
with the engine's threads (the registry's ``n_threads``, else
``CHATQ_WORKER__N_THREADS``, else every core this process may use); llama-server
with the model's slots and llama.cpp options (:mod:`ops.bench_peer`).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from llama_cpp import Llama

from ops import bench_batch as batch
from ops import bench_multiturn as multiturn
from ops.bench_client import Stream, ask, client, run_threads
from ops.bench_peer import start_server
from ops.bench_stats import Side, percentile, ratio, ratio_table, show, turns_label, verdict
from ops.devstack import Stack, free_port, wait_worker
from shared.registry import ModelSpec, Registry
from shared.settings import load_settings
from workers.llama.params import llama_threads

WARM_UP = "Say hello."  # not one of PROMPTS: a warm-up shares only the template's head
PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "Write a long story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step, in detail.",
    "List as many colours as you can, one per line.",
]


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
        return percentile([s.ttft_ms for s in self.streams], q)

    @property
    def rate(self) -> float:
        return statistics.median(s.rate for s in self.streams)

    def line(self) -> str:
        return (f"  {self.name:<30} callers {self.callers}  first token p50 "
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


def progress(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def run_round(name: str, callers: int, base_url: str, prompts: list[str],
              max_tokens: int) -> Round:
    """``callers`` clients start together; each runs its share of the prompts in turn.
    The round's time is the wall clock, first request to last response."""
    streams: list[Stream] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers)

    def caller(mine: list[str]) -> None:
        with client(base_url, timeout=300) as http:
            barrier.wait()
            for prompt in mine:
                result = ask(http, prompt, max_tokens)
                with lock:
                    streams.append(result)

    threads = [threading.Thread(target=caller, args=(prompts[i::callers],))
               for i in range(callers)]
    return Round(name, callers, streams, run_threads(threads))


@dataclass
class Setup:
    """The model both sides run, with the engine's threads."""

    spec: ModelSpec
    path: Path
    threads: int

    @classmethod
    def load(cls) -> Setup:
        settings = load_settings()
        registry = Registry.load(settings.registry)
        spec = registry.for_queue(settings.worker.queue)
        return cls(spec, registry.gguf_path(spec), llama_threads(spec, settings.worker.n_threads))

    @property
    def peer(self) -> str:
        return f"llama-server -np {self.spec.slots}"


def start_sides(root: Path, setup: Setup, server: Path | None) -> tuple[Stack, dict[str, str]]:
    """A local chatq stack (its own Redis, store, worker and API) and, given its binary,
    llama-server as one more of the stack's processes: their base URLs by name."""
    stack = Stack(root)
    try:
        stack.env["CHATQ_REDIS_URL"] = stack.start_redis()
        stack.env["CHATQ_MONGO_URL"] = stack.start_mongo()
        worker = stack.start_worker("cpu")
        wait_worker(stack.env["CHATQ_REDIS_URL"], "cpu", proc=worker)
        port = free_port()
        stack.start_api(port)
        urls = {"chatq": f"http://127.0.0.1:{port}"}
        if server is not None:
            urls["llama-server"] = start_server(stack, server, setup.spec, setup.path,
                                                setup.threads)
    except BaseException:
        stack.stop()
        raise
    return stack, urls


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


def rotated(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def one_caller_pass(llm: Llama, clients: dict[str, httpx.Client], max_tokens: int, n: int,
                    streams: dict[str, list[Stream]]) -> None:
    """Each of ``PROMPTS`` directly and through each HTTP side by one caller, one right
    after the other; which goes first rotates from prompt to prompt, and from pass ``n``
    to the next (so over as many passes as sides each prompt runs in every order)."""
    for i, prompt in enumerate(PROMPTS):
        for name in rotated(["direct", *clients], i + n):
            streams[name].append(direct(llm, prompt, max_tokens) if name == "direct"
                                 else ask(clients[name], prompt, max_tokens))


def rounds(llm: Llama, urls: dict[str, str], runs: int, callers: int,
           max_tokens: int) -> dict[str, Round]:
    """``runs`` passes, each a pass of one caller (direct and every HTTP side in turn,
    prompt by prompt) then a pass of ``callers`` callers on each HTTP side (each prompt
    ``callers`` times; which side first alternates from pass to pass), so a drift in
    the machine's speed weighs on every round alike. The several callers' time is the
    sum of their passes' wall clocks. Rounds by name: ``direct``, ``SIDE 1``,
    ``SIDE N``."""
    one: dict[str, list[Stream]] = {name: [] for name in ["direct", *urls]}
    many: dict[str, list[Stream]] = {name: [] for name in urls}
    many_s = dict.fromkeys(urls, 0.0)
    many_prompts = [p for p in PROMPTS for _ in range(callers)]
    clients = {name: client(url, timeout=300) for name, url in urls.items()}
    try:
        direct(llm, WARM_UP, 8)
        for http in clients.values():
            ask(http, WARM_UP, 8)
        for n in range(runs):
            progress(f"single turn: pass {n + 1}/{runs}")
            one_caller_pass(llm, clients, max_tokens, n, one)
            for name in rotated(list(urls), n):
                r = run_round("", callers, urls[name], many_prompts, max_tokens)
                many[name] += r.streams
                many_s[name] += r.wall_s
    finally:
        for http in clients.values():
            http.close()
    result = {"direct": sequential("llama-cpp-python direct", one["direct"])}
    for name in urls:
        result[f"{name} 1"] = sequential(f"{name}, 1 caller", one[name])
        result[f"{name} N"] = Round(f"{name}, {callers} callers", callers, many[name],
                                    many_s[name])
    return result


def summary(d: Round, one: Round, many: Round) -> None:
    """The targets of the batching issue, chatq against direct and against itself."""
    rate = ratio(one.rate, d.rate)
    added = one.ttft(50) - d.ttft(50)
    scale = ratio(many.aggregate, one.aggregate)
    print(f"  1 caller:  per-stream tokens/s chatq/direct {show(rate, '.3f', '')} "
          f"({verdict(rate, '>= 0.95')}); added first-token latency p50 {added:+.1f} ms "
          f"({verdict(added, '<= 20')})")
    print(f"  {many.callers} callers: aggregate tokens/s {show(scale)} chatq's 1-caller "
          f"aggregate ({verdict(scale, '>= 1.4')}); first-token p50 "
          f"{many.ttft(50):.0f} ms ({verdict(many.ttft(50), '<= 500')})")


def side(one: Round, many: Round) -> Side:
    return Side(one.rate, one.ttft(50), many.aggregate, many.ttft(50))


def single_turn(setup: Setup, urls: dict[str, str], args: argparse.Namespace) -> None:
    """The single-turn scenario: one caller, then ``args.callers``; prints its table."""
    llm = load_direct(setup.spec, setup.path, setup.threads)
    try:
        r = rounds(llm, urls, args.runs, args.callers, args.max_tokens)
        reset = direct_round(llm, "direct, KV reset per call", PROMPTS * args.runs,
                             args.max_tokens, fresh=True)
    finally:
        llm.close()
    print(f"\nsingle turn: model {setup.spec.name}, slots {setup.spec.slots}, max_tokens "
          f"{args.max_tokens}, greedy, threads {setup.threads} on every side, flash attention "
          f"as the registry sets it (llama.cpp's auto unless set), {args.runs} pass(es)")
    for r_ in [*r.values(), reset]:
        print(r_.line().replace("llama-server", setup.peer))
    summary(r["direct"], r["chatq 1"], r["chatq N"])
    direct_side = Side(r["direct"].rate, r["direct"].ttft(50), r["direct"].aggregate,
                       r["direct"].ttft(50))
    peers = {"direct": direct_side}
    if "llama-server" in urls:
        peers["llama-server"] = side(r["llama-server 1"], r["llama-server N"])
    for line in ratio_table(side(r["chatq 1"], r["chatq N"]), peers, args.callers):
        print(line.replace("llama-server", setup.peer))
    print("  (direct: llama-cpp-python's Llama as it is, reusing the KV of what a prompt shares "
          "with its previous call, here the chat template's head, which chatq's engine reads "
          "once at load; it serves one call at a time, so its figures for several callers are "
          "its one-caller ones, calls one after another; 'KV reset per call' reads every "
          "prompt whole, for information)")


def multiturn_runs(urls: dict[str, str], args: argparse.Namespace
                   ) -> dict[tuple[str, int], list[multiturn.Run]]:
    """Every conversation count, ``args.mt_passes`` times, on every side; which side goes
    first alternates from pass to pass and from count to count. Each run has a system
    prompt edition of its own (nothing cached from an earlier run)."""
    runs: dict[tuple[str, int], list[multiturn.Run]] = {}
    edition = 0
    for i, count in enumerate(args.conversations):
        for p in range(args.mt_passes):
            for name in rotated(list(urls), i + p):
                progress(f"multi-turn: {name}, {count} conversation(s), pass {p + 1}/"
                         f"{args.mt_passes}")
                runs.setdefault((name, count), []).append(multiturn.run(
                    urls[name], count, args.turns, edition, args.answer_tokens))
            edition += 1
    return runs


def multiturn_row(name: str, count: int, f: multiturn.Figures) -> str:
    return (f"  {name:<20} {count:>13}  {f.turn1_ms:9.0f} ms  {f.last_ms:9.0f} ms  "
            f"{f.late_p50_ms:9.0f} ms  {f.wall_s:8.1f} s  {f.answer_tokens:5.0f}  "
            f"{f.prompt_tokens[0]:>5} -> {f.prompt_tokens[1]}")


def multiturn_ratios(count: int, figs: dict[str, multiturn.Figures], late: str,
                     peer: str) -> str:
    chatq = figs["chatq"]
    own = ratio(chatq.late_p50_ms, chatq.turn1_ms)
    line = (f"  {count} conversation{'s' if count > 1 else ''}: chatq {late} p50 / chatq turn 1 "
            f"{show(own)}" + (f" ({verdict(own, '<= 0.2')})" if count == 1 else ""))
    server = figs.get("llama-server")
    if server is not None:
        theirs = ratio(chatq.late_p50_ms, server.late_p50_ms)
        line += (f"; chatq {late} p50 / {peer}'s {show(theirs)}"
                 + (f" ({verdict(theirs, '<= 0.5')})" if count > 1 else "")
                 + f"; {peer}'s own {late} / turn 1 "
                 f"{show(ratio(server.late_p50_ms, server.turn1_ms))}")
    return line


def multiturn_scenario(setup: Setup, urls: dict[str, str], args: argparse.Namespace) -> None:
    """The multi-turn scenario (:mod:`ops.bench_multiturn`); prints its table."""
    for http_url in urls.values():
        with client(http_url) as http:
            ask(http, WARM_UP, 8)
    runs = multiturn_runs(urls, args)
    late = turns_label(args.turns)
    print(f"\nmulti-turn: {args.turns} turns, the whole history resent each turn, answers of "
          f"at most {args.answer_tokens} tokens, greedy; chatq {setup.spec.slots} slots, "
          f"{setup.peer}; {args.mt_passes} pass(es) per count, medians over them")
    print(f"  {'side':<20} {'conversations':>13}  {'turn 1 TTFT':>12}  "
          f"{f'turn {args.turns} TTFT':>12}  {late + ' p50':>12}  {'whole run':>10}  "
          f"{'tokens':>6}  prompt tokens turn 1 -> {args.turns}")
    for count in args.conversations:
        figs = {name: multiturn.of_runs(runs[name, count]) for name in urls}
        for name, f in figs.items():
            print(multiturn_row(name.replace("llama-server", setup.peer), count, f))
        print(multiturn_ratios(count, figs, late, setup.peer))
    print("  (first-token times p50 over the conversations; 'tokens': answer tokens median; "
          "targets from the prompt-cache issue: <= 0.2 of turn 1 at 1 conversation, <= 0.5 "
          "of the peer's at several)")


def batch_scenario(setup: Setup, urls: dict[str, str], args: argparse.Namespace) -> None:
    """The batch scenario (:mod:`ops.bench_batch`); prints its figures."""
    chatq, tokens = urls["chatq"], args.line_tokens
    for http_url in urls.values():
        with client(http_url) as http:
            ask(http, WARM_UP, 8)
    progress(f"batch: {args.probes} interactive requests on an idle queue")
    idle = batch.idle_probes(chatq, args.probes, tokens)
    progress(f"batch: {args.lines} lines through the Batch API")
    ran = batch.run_batch(chatq, batch.batch_file(args.lines, setup.spec.name, tokens), tokens)
    one_by_one = {}
    for name, url in urls.items():
        progress(f"batch: the {args.lines} requests one by one, {args.callers} callers, {name}")
        one_by_one[name] = batch.one_by_one(url, args.callers, args.lines, tokens)
    print(f"\nbatch: {args.lines} chat requests of at most {tokens} tokens, greedy; chatq "
          f"{setup.spec.slots} slots, {setup.peer}")
    print(batch.rate_line(f"chatq Batch API ({ran.status})", ran.counts.get("completed", 0),
                          ran.seconds))
    for name, (seconds, answers) in one_by_one.items():
        print(batch.rate_line(f"{name.replace('llama-server', setup.peer)}, one by one, "
                              f"{args.callers} callers", answers, seconds))
    seconds, answers = one_by_one["chatq"]
    print(f"  Batch API / chatq one by one "
          f"{show(ratio(ran.rate, batch.per_second(answers, seconds)))}")
    print(batch.ttft_line("interactive, idle queue", idle))
    print(batch.ttft_line("interactive, while the batch runs", ran.probes))
    print("  (the batch's time: from the upload to the poll that sees it ended; one by one: "
          "first request to last answer; interactive: one streaming caller, requests one "
          "after the other)")


SCENARIOS = {"single": single_turn, "multiturn": multiturn_scenario, "batch": batch_scenario}
DEFAULT_SCENARIOS = ["single", "multiturn"]  # batch: a few minutes more, on demand


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", nargs="+", choices=list(SCENARIOS),
                        default=DEFAULT_SCENARIOS,
                        help="scenarios to run, in order (default: single multiturn)")
    parser.add_argument("--llama-server", type=Path, default=None,
                        help="llama-server binary (ops/install_llama_server.sh), the peer; "
                             "without it, chatq and llama-cpp-python direct only")
    single = parser.add_argument_group("single turn")
    single.add_argument("--runs", type=int, default=3, help="repetitions of the prompt set")
    single.add_argument("--max-tokens", type=int, default=128)
    single.add_argument("--callers", type=int, default=4,
                        help="callers at once (and the batch scenario's one by one)")
    multi = parser.add_argument_group("multi-turn")
    multi.add_argument("--turns", type=int, default=10)
    multi.add_argument("--conversations", type=int, nargs="+", default=[1, 8],
                       help="conversations at once, one run each")
    multi.add_argument("--mt-passes", type=int, default=1,
                       help="runs of each conversation count on each side")
    multi.add_argument("--answer-tokens", type=int, default=48)
    lines = parser.add_argument_group("batch")
    lines.add_argument("--lines", type=int, default=200, help="requests in the batch")
    lines.add_argument("--line-tokens", type=int, default=8,
                       help="max_tokens of each request (and of the interactive ones)")
    lines.add_argument("--probes", type=int, default=8,
                       help="interactive requests on the idle queue")
    return parser.parse_args()


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so that the stack (and llama-server) stops


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args()
    setup = Setup.load()
    if args.llama_server is not None and not args.llama_server.is_file():
        raise SystemExit(f"no llama-server at {args.llama_server} "
                         "(ops/install_llama_server.sh builds it)")
    with tempfile.TemporaryDirectory() as tmp:
        progress("starting chatq" + (" and llama-server" if args.llama_server else ""))
        stack, urls = start_sides(Path(tmp), setup, args.llama_server)
        try:
            for name in args.scenario:
                SCENARIOS[name](setup, urls, args)
        finally:
            stack.stop()
    if args.llama_server is None:
        print("\n(no llama-server given: `make bench` builds it and passes --llama-server)")


if __name__ == "__main__":
    main()
