"""The batching llama engine, in-process, with the real demo model (SmolLM2-135M).

One engine with 4 slots and 2 threads serves the module; a second one with a
single slot shows that a seq id reused by the next job carries nothing over.
Answers are greedy unless a test says otherwise, so they are reproducible.
"""

from __future__ import annotations

import dataclasses
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
import pytest

from shared.prompting import Prompt
from shared.registry import Registry
from shared.schemas import SamplingParams
from shared.settings import DEFAULT_REGISTRY
from workers.engine import Generation, GenRequest, Outcome, Piece
from workers.llama import LlamaEngine

COUNT = "Count from 1 to 20, separated by commas."
BANANA = "Repeat the word 'banana' ten times."
COLOURS = "List five colours."
FRENCH = "Say hello in French."
FOUR = [COUNT, BANANA, COLOURS, FRENCH]


def make_engine(slots: int, **options: Any) -> LlamaEngine:
    """The prompt cache is off unless a test turns it on: these tests count what a job
    reads and that a finished job leaves nothing (tests/workers/llama/test_prompt_cache.py
    covers the cache)."""
    registry = Registry.load(DEFAULT_REGISTRY)
    spec = registry.models[registry.default_name].model_copy(
        update={"prompt_cache": False, **options})
    return LlamaEngine(spec, registry.gguf_path(spec), n_threads=2, slots=slots)


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaEngine]:
    eng = make_engine(slots=4)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def single() -> Iterator[LlamaEngine]:
    eng = make_engine(slots=1)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(8) as executor:
        yield executor


def request(engine: LlamaEngine, text: str, max_tokens: int = 24, *, deadline_s: float = 3600,
            continuation: str = "", messages: list[dict[str, str]] | None = None,
            **params: Any) -> GenRequest:
    messages = messages or [{"role": "user", "content": text}]
    params.setdefault("temperature", 0)
    params.setdefault("top_p", 1)
    return GenRequest(job_id=f"test-{text[:16]}", messages=messages,
                      prompt=engine.prompter.render(messages),
                      params=SamplingParams(max_tokens=max_tokens, **params),
                      deadline=time.monotonic() + deadline_s, continuation=continuation)


@dataclass
class Result:
    outcome: Outcome
    pieces: list[tuple[float, Piece]] = field(default_factory=list)  # (monotonic, piece)
    ended: float = 0.0

    @property
    def text(self) -> str:
        return "".join(p.text for _, p in self.pieces)

    @property
    def tokens(self) -> int:
        return sum(p.tokens for _, p in self.pieces)

    def first_text_at(self) -> float:
        return next(t for t, p in self.pieces if p.text)

    def largest_gap(self, start: float, end: float) -> float:
        times = [start] + [t for t, p in self.pieces if start <= t <= end and p.tokens] + [end]
        return max(b - a for a, b in itertools.pairwise(times))


def collect(gen: Generation, on_piece: Callable[[Result], None] | None = None) -> Result:
    result = Result(gen.outcome)
    for piece in gen.pieces(0.02):
        if piece is not None:
            result.pieces.append((time.monotonic(), piece))
            if on_piece is not None:
                on_piece(result)
    result.ended = time.monotonic()
    result.outcome = gen.outcome
    return result


def run(engine: LlamaEngine, req: GenRequest) -> Result:
    return collect(engine.submit(req))


def start(pool: ThreadPoolExecutor, engine: LlamaEngine, req: GenRequest,
          on_piece: Callable[[Result], None] | None = None) -> tuple[Generation, Future[Result]]:
    gen = engine.submit(req)
    return gen, pool.submit(collect, gen, on_piece)


def wait_until(check: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.005)


# Batching


def test_four_jobs_run_at_once_and_each_answers_its_own_prompt(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    busiest = 0

    def watch(_: Result) -> None:
        nonlocal busiest
        busiest = max(busiest, engine.busy())

    def submit_and_collect(text: str) -> Result:  # from a thread, as a task thread would
        return collect(engine.submit(request(engine, text, 24)), watch)

    jobs = [pool.submit(submit_and_collect, text) for text in FOUR]
    count, banana, colours, french = (future.result(600) for future in jobs)
    assert busiest == 4
    assert all(r.outcome.finish_reason in ("stop", "length") for r in
               (count, banana, colours, french))
    assert "1" in count.text and "2" in count.text and "3" in count.text
    assert count.text.lower().count("banana") == 0
    assert banana.text.lower().count("banana") >= 3
    assert all(colour in colours.text for colour in ("Blue", "Green", "Red"))
    assert "banana" not in colours.text.lower()
    assert "Bonjour" in french.text
    assert engine.busy() == 0


def test_batching_does_not_change_greedy_or_seeded_output(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    """Each sequence has its own KV stream and sampler; llama.cpp's batched
    matmuls give this model bit-identical logits, so the texts are equal."""
    greedy = request(engine, COLOURS, 32)
    seeded = request(engine, "Write a short poem about the sea.", 32, temperature=0.9, seed=7)
    alone = [run(engine, greedy).text, run(engine, seeded).text]
    others = [request(engine, text, 40) for text in (COUNT, BANANA)]
    jobs = [start(pool, engine, req) for req in (greedy, seeded, *others)]
    together = [future.result(600).text for _, future in jobs[:2]]
    for _, future in jobs[2:]:
        future.result(600)
    assert together == alone
    assert run(engine, request(engine, "Write a short poem about the sea.", 32,
                               temperature=0.9, seed=8)).text != alone[1]


def test_cancel_stops_one_job_within_a_token_and_the_others_finish(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    victim_req = request(engine, COUNT, 64)
    others = [start(pool, engine, request(engine, text, 24)) for text in FOUR[1:]]
    generated_at_cancel: list[int] = []

    def cancel_after_three(result: Result) -> None:
        if result.tokens >= 3 and not generated_at_cancel:
            generated_at_cancel.append(victim.outcome.completion_tokens)  # made, maybe unread
            victim.cancel()

    victim, future = start(pool, engine, victim_req, cancel_after_three)
    result = future.result(600)
    assert result.outcome.finish_reason == "cancelled"
    assert result.outcome.completion_tokens <= generated_at_cancel[0] + 1
    assert result.outcome.completion_tokens == result.tokens
    assert result.text.startswith("1")
    for _, other in others:
        assert other.result(600).outcome.finish_reason in ("stop", "length")
    victim.cancel()  # idempotent, and harmless once it ended


def test_long_prompt_is_read_in_chunks_while_others_stream(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    streaming, stream_future = start(pool, engine, request(engine, COUNT, 200))
    wait_until(lambda: engine.busy() == 1)
    time.sleep(0.3)  # it is generating
    long_text = "Summarise this. " + " ".join(f"Item {i} is a line of filler text."
                                              for i in range(130))
    long_req = request(engine, long_text, 4)
    assert 1300 <= len(long_req.prompt.tokens) <= 1900  # type: ignore[union-attr]
    submitted = time.monotonic()
    long_result = run(engine, long_req)
    read = long_result.first_text_at() - submitted  # its whole prompt was read by then
    streaming.cancel()
    stream = stream_future.result(600)
    during = [p for t, p in stream.pieces if submitted <= t <= long_result.first_text_at()]
    gap = stream.largest_gap(submitted, long_result.first_text_at())
    # the prompt is read a chunk per step and the streaming job gets a token
    # every step, instead of one wait for the whole ~1500-token prompt
    assert len(during) >= 8
    assert gap < read / 4, (gap, read)


def test_a_fifth_job_waits_for_a_free_slot(engine: LlamaEngine,
                                           pool: ThreadPoolExecutor) -> None:
    first = [start(pool, engine, request(engine, text, n))
             for text, n in zip(FOUR, (24, 32, 40, 48), strict=True)]
    fifth_req = request(engine, FRENCH, 8)
    wait_until(lambda: engine.busy() == 4)
    fifth_gen, fifth_future = start(pool, engine, fifth_req)
    while not fifth_future.done():
        # the engine ends a job before it admits the next one, so a fifth job that
        # produced a token means one of the first four had ended already
        produced = fifth_gen.outcome.completion_tokens
        ended = any(gen.finished for gen, _ in first)  # type: ignore[attr-defined]
        assert produced == 0 or ended
        assert engine.busy() <= 4
        time.sleep(0.001)
    fifth = fifth_future.result(600)
    assert fifth.outcome.finish_reason in ("stop", "length") and "Bonjour" in fifth.text
    for _, future in first:
        future.result(600)


# Ending a generation


def test_a_caller_that_stops_reading_frees_its_slot(engine: LlamaEngine) -> None:
    gen = engine.submit(request(engine, COUNT, 500))

    class Interrupted(Exception):  # like Celery's soft time limit in the task's loop
        pass

    with pytest.raises(Interrupted):
        for piece in gen.pieces(0.02):
            if piece is not None and piece.tokens:
                raise Interrupted
    list(gen.pieces(0.02))  # the rest, until its end: the outcome is complete then
    assert gen.outcome.finish_reason == "cancelled" and gen.outcome.completion_tokens < 10
    wait_until(lambda: engine.busy() == 0, timeout=10)


def test_deadline_ends_with_timeout_and_keeps_the_partial_text(engine: LlamaEngine) -> None:
    model = engine._weights
    endless = {token: -100.0 for token in range(model.n_vocab)  # no end-of-generation token
               if llama_cpp.llama_vocab_is_eog(model.vocab, token)}
    result = run(engine, request(engine, COUNT, 2000, deadline_s=2.0, logit_bias=endless))
    assert result.outcome.finish_reason == "timeout"
    assert result.text.startswith("1") and result.outcome.completion_tokens > 0
    assert result.outcome.completion_tokens == result.tokens


def test_stop_string_cuts_the_text(engine: LlamaEngine) -> None:
    full = run(engine, request(engine, COUNT, 24)).text
    assert "4." in full
    stopped = run(engine, request(engine, COUNT, 24, stop=["4."], logprobs=True))
    assert stopped.outcome.finish_reason == "stop"
    assert stopped.text == full[: full.index("4.")]
    # logprobs cover the tokens that made the released text, not those of the
    # stop string ("4" and "." here, which begin at the cut)
    tokens = [lp.token for _, p in stopped.pieces for lp in (p.logprobs or [])]
    assert "".join(tokens) == stopped.text
    assert len(tokens) == stopped.outcome.completion_tokens - 2


def test_max_tokens_ends_with_length(engine: LlamaEngine) -> None:
    result = run(engine, request(engine, COUNT, 5))
    assert result.outcome.finish_reason == "length"
    assert result.outcome.completion_tokens == result.tokens == 5
    req = request(engine, COUNT, 5)
    assert result.outcome.prompt_tokens == len(req.prompt.tokens)  # type: ignore[union-attr]


def test_eog_token_ends_with_stop(engine: LlamaEngine) -> None:
    wait_until(lambda: engine.busy() == 0, timeout=60)  # alone: the answer is the model's own
    result = run(engine, request(engine, "What is 2+2? Answer with the number only.", 64))
    assert result.outcome.finish_reason == "stop"
    assert result.outcome.completion_tokens < 64 and "<|im_end|>" not in result.text


def test_continuation_resumes_where_the_earlier_attempt_stopped(engine: LlamaEngine) -> None:
    full = run(engine, request(engine, COUNT, 24))
    earlier = "".join(p.text for _, p in full.pieces[:10])
    resumed = run(engine, request(engine, COUNT, 14, continuation=earlier))
    assert resumed.outcome.prompt_tokens == full.outcome.prompt_tokens
    assert earlier + resumed.text == full.text


def test_prompt_longer_than_the_context_fails_only_that_job(engine: LlamaEngine) -> None:
    huge = request(engine, "word " * 2100, 8)
    result = run(engine, huge)
    assert result.outcome.finish_reason == "error"
    assert "does not fit" in (result.outcome.error or "")
    assert run(engine, request(engine, FRENCH, 8)).outcome.finish_reason in ("stop", "length")


def test_a_request_without_prompt_tokens_fails_at_once(engine: LlamaEngine) -> None:
    req = request(engine, FRENCH, 8)
    for prompt in (None, Prompt(tokens=[], stop=[])):
        result = run(engine, dataclasses.replace(req, prompt=prompt))
        assert result.outcome.finish_reason == "error" and result.text == ""


# Isolation and faults


def test_a_reused_sequence_keeps_nothing_of_the_previous_job(single: LlamaEngine) -> None:
    probe = request(single, COLOURS, 24)
    fresh = run(single, probe).text
    secret = "My password is ZEBRA-PURPLE-9931. Repeat my password many times."
    run(single, request(single, secret, 40))  # ends with length
    interrupted = single.submit(request(single, secret, 200))
    for piece in interrupted.pieces(0.02):
        if piece is not None and piece.tokens:
            interrupted.cancel()
    assert interrupted.outcome.finish_reason == "cancelled"
    assert run(single, probe).text == fresh
    mem = single._scheduler.mem
    assert llama_cpp.llama_memory_seq_pos_max(mem, 0) == -1  # its KV stream is empty


def test_a_bad_grammar_fails_only_its_job(engine: LlamaEngine,
                                          pool: ThreadPoolExecutor) -> None:
    jobs = [start(pool, engine, request(engine, text, 16)) for text in FOUR[:3]]
    bad = run(engine, request(engine, FRENCH, 8, grammar='root ::= "yes'))
    missing_root = run(engine, request(engine, FRENCH, 8, grammar='answer ::= "yes"'))
    assert bad.outcome.finish_reason == "error" and "grammar" in (bad.outcome.error or "")
    assert "root" in (missing_root.outcome.error or "")
    assert bad.text == ""
    for _, future in jobs:
        assert future.result(600).outcome.finish_reason in ("stop", "length")


def test_a_failed_decode_fails_only_the_job_it_cannot_decode(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    scheduler = engine._scheduler
    # "ophon": a late BPE merge, in no other prompt or answer of this test
    poison = max(engine.llm.tokenize(b" Xylophonist", add_bos=False))
    real = scheduler._decode

    def failing(n_tokens: int) -> int:
        batch = scheduler.batch
        if any(batch.token[i] == poison for i in range(n_tokens)):
            return -3  # what llama.cpp answers for a fatal compute error
        return real(n_tokens)

    scheduler._decode = failing  # type: ignore[method-assign]
    try:
        jobs = [start(pool, engine, request(engine, text, 16)) for text in FOUR[:3]]
        wait_until(lambda: engine.busy() == 3)
        victim = run(engine, request(engine, "Tell me about the Xylophonist.", 16))
        others = [future.result(600) for _, future in jobs]
    finally:
        del scheduler._decode
    assert victim.outcome.finish_reason == "error"
    assert "llama_decode failed" in (victim.outcome.error or "")
    assert all(r.outcome.finish_reason in ("stop", "length") for r in others)
    assert run(engine, request(engine, FRENCH, 8)).outcome.finish_reason in ("stop", "length")


def test_an_exception_in_a_step_ends_its_jobs_and_the_engine_goes_on(
        engine: LlamaEngine) -> None:
    scheduler = engine._scheduler

    def broken(n_tokens: int) -> int:
        raise RuntimeError("boom")

    scheduler._decode = broken  # type: ignore[method-assign]
    try:
        result = run(engine, request(engine, FRENCH, 8))
    finally:
        del scheduler._decode
    assert result.outcome.finish_reason == "error" and "boom" in (result.outcome.error or "")
    assert run(engine, request(engine, FRENCH, 8)).outcome.finish_reason in ("stop", "length")


# Sampling options


def test_logit_bias_against_the_first_greedy_token_changes_the_answer(
        engine: LlamaEngine) -> None:
    plain = run(engine, request(engine, COLOURS, 8))
    first = engine.llm.tokenize(plain.pieces[0][1].text.encode(), add_bos=False)
    assert len(first) == 1
    biased = run(engine, request(engine, COLOURS, 8, logit_bias={first[0]: -100}))
    assert not biased.text.startswith(plain.pieces[0][1].text)


def test_a_grammar_constrains_the_answer(engine: LlamaEngine) -> None:
    grammar = 'root ::= "yes" | "no"'
    for params in ({}, {"temperature": 1.0, "seed": 3}):
        result = run(engine, request(engine, COLOURS, 16, grammar=grammar, **params))
        assert result.text in ("yes", "no")
        assert result.outcome.finish_reason == "stop"


def test_a_continuation_resumes_inside_the_grammar(engine: LlamaEngine) -> None:
    grammar = 'root ::= "yes, certainly" | "no"'
    resumed = run(engine, request(engine, COLOURS, 16, grammar=grammar, continuation="yes, c"))
    assert resumed.text == "ertainly" and resumed.outcome.finish_reason == "stop"
    # llama.cpp would abort the process on a token its grammar forbids: refused first
    refused = run(engine, request(engine, COLOURS, 16, grammar=grammar, continuation="maybe"))
    assert refused.outcome.finish_reason == "error"
    assert "does not match the grammar" in (refused.outcome.error or "")


def test_logprobs_token_texts_add_up_to_the_text(engine: LlamaEngine) -> None:
    result = run(engine, request(engine, "Say hello in Japanese.", 24, logprobs=True,
                                 top_logprobs=3))
    logprobs = [lp for _, p in result.pieces for lp in (p.logprobs or [])]
    assert "".join(lp.token for lp in logprobs) == result.text
    assert len(logprobs) == result.outcome.completion_tokens
    for lp in logprobs:
        assert lp.logprob <= 0 and len(lp.top) == 3
        assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        assert lp.top[0].logprob == pytest.approx(lp.logprob)  # greedy took the best one
    assert b"".join(bytes(lp.bytes) for lp in logprobs).decode("utf-8") == result.text


def test_penalties_and_top_k_min_p_run(engine: LlamaEngine) -> None:
    plain = run(engine, request(engine, BANANA, 24))
    penalised = run(engine, request(engine, BANANA, 24, repeat_penalty=1.5,
                                    presence_penalty=1.0, frequency_penalty=1.0))
    assert penalised.text.lower().count("banana") < plain.text.lower().count("banana")
    sampled = run(engine, request(engine, COLOURS, 16, temperature=0.8, top_k=5, top_p=0.9,
                                  min_p=0.1, seed=1))
    assert sampled.outcome.finish_reason in ("stop", "length") and sampled.text


# Lifecycle


def test_close_cancels_running_and_waiting_jobs() -> None:
    eng = make_engine(slots=1)
    late_req = request(eng, COUNT, 5)
    running = eng.submit(request(eng, COUNT, 500))
    waiting = eng.submit(request(eng, COUNT, 500))
    wait_until(lambda: eng.busy() == 1)
    closer = threading.Thread(target=eng.close)
    closer.start()
    results = [collect(running), collect(waiting)]
    closer.join(30)
    assert [r.outcome.finish_reason for r in results] == ["cancelled", "cancelled"]
    late = collect(eng.submit(late_req))
    assert late.outcome.finish_reason == "error"


def test_info_shows_the_per_sequence_context(engine: LlamaEngine) -> None:
    info = engine.info()
    assert info["n_ctx"] == "2048" and info["slots"] == "4"
    heads = int(info["template_head_tokens"])
    assert heads > 0  # SmolLM2's template opens every prompt with its system prompt
    assert int(info["n_ctx_total"]) == 5 * 2048  # four slots and the template head's stream
    assert float(info["loaded_at"]) > 0
    ctx = engine._scheduler.ctx
    assert llama_cpp.llama_n_ctx_seq(ctx) == 2048 and llama_cpp.llama_n_seq_max(ctx) == 5


# The template head


@pytest.fixture(scope="module")
def whole() -> Iterator[LlamaEngine]:
    """An engine that reads every prompt whole (``template_head = false``)."""
    eng = make_engine(slots=2, template_head=False)
    yield eng
    eng.close()


def test_template_head_false_reads_every_prompt_whole_with_no_extra_stream(
        whole: LlamaEngine) -> None:
    assert whole.info()["template_head_tokens"] == "0"
    assert llama_cpp.llama_n_seq_max(whole._scheduler.ctx) == 2
    assert run(whole, request(whole, COUNT, 8)).outcome.finish_reason == "length"


def test_the_template_head_is_what_chat_prompts_share(engine: LlamaEngine) -> None:
    head = engine._scheduler.head
    tokens = [engine.prompter.render([{"role": "user", "content": text}]).tokens
              for text in FOUR]
    assert all(t[:len(head)] == head and len(t) > len(head) for t in tokens)
    text = engine.llm.detokenize(head, special=True).decode()
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>user\n")
    assert not any(word in text for word in ("Count", "banana", "colours", "French"))


def test_a_job_reads_only_what_follows_the_head_and_answers_as_if_read_whole(
        engine: LlamaEngine, whole: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = engine._scheduler
    first_reads: list[int] = []
    decode = sched._decode

    def recording(n_tokens: int) -> int:
        if not first_reads:
            first_reads.append(n_tokens)
        return decode(n_tokens)

    monkeypatch.setattr(sched, "_decode", recording)
    req = request(engine, COUNT, 32)
    assert run(engine, req).text == run(whole, req).text
    assert first_reads == [len(req.prompt.tokens) - len(sched.head)]  # type: ignore[union-attr]
    for text in (BANANA, COLOURS, FRENCH):
        assert run(engine, request(engine, text, 32)).text == run(
            whole, request(whole, text, 32)).text


def test_a_prompt_that_merges_with_the_heads_last_token_is_read_whole(
        engine: LlamaEngine, whole: LlamaEngine) -> None:
    text = "\n\n  Say hello in French."  # its newlines join the header's into one token
    req = request(engine, text, 24)
    head = engine._scheduler.head
    assert req.prompt is not None and req.prompt.tokens[:len(head)] != head
    assert run(engine, req).text == run(whole, request(whole, text, 24)).text


def test_a_prompt_with_its_own_system_message_is_read_whole(
        engine: LlamaEngine, whole: LlamaEngine) -> None:
    messages = [{"role": "system", "content": "You are a pirate. Answer like one."},
                {"role": "user", "content": FRENCH}]
    req = request(engine, "", 32, messages=messages)
    assert req.prompt is not None and req.prompt.tokens[:len(engine._scheduler.head)] != \
        engine._scheduler.head
    assert run(engine, req).text == run(whole, request(whole, "", 32, messages=messages)).text


def test_jobs_never_write_into_the_template_heads_stream(
        engine: LlamaEngine, pool: ThreadPoolExecutor) -> None:
    sched = engine._scheduler
    jobs = [start(pool, engine, request(engine, text, 16)) for text in FOUR]
    for _, future in jobs:
        future.result(600)
    mem = sched.mem
    assert llama_cpp.llama_memory_seq_pos_min(mem, sched.head_seq) == 0
    assert llama_cpp.llama_memory_seq_pos_max(mem, sched.head_seq) == len(sched.head) - 1
    assert all(llama_cpp.llama_memory_seq_pos_max(mem, i) == -1 for i in range(engine.slots))
