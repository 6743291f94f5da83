"""The llama engine's prompt cache, in-process, with the real demo model (SmolLM2-135M).

A finished job's KV stays in its slot (what it read in whole prefill chunks); the next
job of the same tenant whose prompt begins the same way reads only what follows
(counted here from the batches that reach llama.cpp), and answers exactly as an
engine without the cache does (greedy): it reads the rest in the chunks it would
read its whole prompt in.
Another tenant gets nothing of it unless the registry marks the prefix shared; a
sequence evicted from its slot is saved in host memory and restored; a cancelled,
timed-out or failed job leaves no entry that holds anything but what its KV holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest

from tests.workers.llama.test_engine import make_engine, request, run, wait_until
from workers.llama import LlamaEngine, template_head
from workers.llama.cache import Entry, HostCache, Sharing

# A long system prompt, as an office assistant with its reference data would have.
OFFICE = ("You are the assistant of the Lindqvist & Moreau office. Opening hours: Monday "
          "to Friday 8:00-17:30, Saturday 9:00-12:00. Rooms: Aster (12 seats, projector), "
          "Birch (6 seats), Cedar (4 seats, phone booth). Coffee machine on floor 2. "
          "Answer briefly and politely.")
PERSONA = ("You are Captain Mira, a cheerful pirate who answers every question in rhyme. "
           "You sail the Seven Seas aboard the Gull, a three-masted ship with a crew of "
           "forty, a parrot named Biscuit and a cook who only makes soup. You never reveal "
           "where the treasure is buried.")
QUESTION = "Which room has a projector?"
FOLLOW_UP = "And how many seats does Birch have?"


def cached_engine(slots: int = 2, **options: Any) -> LlamaEngine:
    return make_engine(slots=slots, prompt_cache=True, shared_prompts=[PERSONA], **options)


@pytest.fixture(scope="module")
def cached() -> Iterator[LlamaEngine]:
    eng = cached_engine()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def plain() -> Iterator[LlamaEngine]:
    """The same model without the cache: the reference answers."""
    eng = make_engine(slots=2, prompt_cache=False)
    yield eng
    eng.close()


def chat(engine: LlamaEngine, messages: list[dict[str, str]], tenant: str = "acme",
         max_tokens: int = 32, conversation: str | None = None, **params: Any) -> Any:
    req = request(engine, "", max_tokens, messages=messages, **params)
    return run(engine, dataclasses.replace(req, tenant=tenant, conversation_id=conversation))


def office(*turns: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": OFFICE}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def whole_chunks(engine: LlamaEngine, tokens: list[int]) -> int:
    """What a later prompt beginning with ``tokens`` (and more) can take from the cache:
    the tokens read in whole prefill chunks from the start (or the template head's end)."""
    head = engine._scheduler.head
    start = len(head) if head and tokens[:len(head)] == head else 0
    return start + (len(tokens) - start) // engine.prefill_chunk * engine.prefill_chunk


def record_reads(engine: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The positions of every token the engine decodes from now on, in order."""
    sched = engine._scheduler
    decode = sched._decode
    positions: list[int] = []

    def recording(n_tokens: int) -> int:
        positions.extend(sched.batch.pos[i] for i in range(n_tokens))
        return decode(n_tokens)

    monkeypatch.setattr(sched, "_decode", recording)
    return positions


def assert_entries_hold_their_kv(engine: LlamaEngine) -> None:
    """Every free slot's entry lists exactly the tokens its KV stream holds (an empty
    stream has none). Read while the engine is idle."""
    wait_until(lambda: engine.busy() == 0)
    sched = engine._scheduler
    for seq_id in range(engine.slots):
        top = llama_cpp.llama_memory_seq_pos_max(sched.mem, seq_id)
        entry = sched.kept[seq_id]
        assert top == (len(entry.tokens) - 1 if entry is not None else -1)


# Turn after turn


def test_a_second_turn_reads_only_the_new_tokens_and_answers_as_without_the_cache(
        cached: LlamaEngine, plain: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = chat(cached, office(QUESTION), tenant="turns")
    assert first.outcome.cached_tokens == 0  # its own system message: nothing to reuse
    assert first.text == chat(plain, office(QUESTION)).text
    turn2 = office(QUESTION, first.text, FOLLOW_UP)
    prompt = cached.prompter.render(turn2).tokens
    reads = record_reads(cached, monkeypatch)
    second = chat(cached, turn2, tenant="turns")
    cached_n = second.outcome.cached_tokens
    # the first turn's prompt as it was read in whole chunks (the rest is read again)
    assert cached_n == whole_chunks(cached, cached.prompter.render(office(QUESTION)).tokens)
    assert cached_n > 0
    read = [p for p in reads if p < len(prompt)]
    assert read == list(range(cached_n, len(prompt)))  # only what follows, each token once
    assert second.outcome.prompt_tokens == len(prompt)
    assert second.text == chat(plain, turn2).text
    assert_entries_hold_their_kv(cached)


def test_the_same_prompt_again_reads_only_its_last_token(
        cached: LlamaEngine, plain: LlamaEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = office("Where is the coffee machine?")
    once = chat(cached, messages, tenant="again")
    reads = record_reads(cached, monkeypatch)
    again = chat(cached, messages, tenant="again")
    tokens = cached.prompter.render(messages).tokens
    n = len(tokens)
    reused = again.outcome.cached_tokens
    assert reused == whole_chunks(cached, tokens[:-1]) > 0  # the last one gives the logits
    assert [p for p in reads if p < n] == list(range(reused, n))
    assert again.text == once.text == chat(plain, messages).text


def test_prompts_read_at_the_same_time_are_cached_as_if_read_alone(
        cached: LlamaEngine, plain: LlamaEngine) -> None:
    """Two prompts read at once share each step's prefill budget: each is still read
    in whole chunks, so each is cached as far as when read alone."""
    firsts = [office(f"{QUESTION} ({'first' if i == 0 else 'second'} caller)")
              for i in range(2)]
    reqs = [dataclasses.replace(request(cached, "", 8, messages=m), tenant=f"pair{i}")
            for i, m in enumerate(firsts)]
    gens = [cached.submit(r) for r in reqs]  # both waiting before either is read
    for gen in gens:
        list(gen.pieces(0.02))
    for i, messages in enumerate(firsts):
        tokens = cached.prompter.render(messages).tokens
        again = chat(cached, messages, tenant=f"pair{i}")
        assert again.outcome.cached_tokens == whole_chunks(cached, tokens[:-1])
        assert again.text == chat(plain, messages).text


def test_without_the_cache_only_the_template_head_is_reused(plain: LlamaEngine) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    for _ in range(2):
        result = chat(plain, messages)
        assert result.outcome.cached_tokens == len(plain._scheduler.head) > 0
    assert all(e is None for e in plain._scheduler.kept)
    assert plain.cache_info()["prompt_cache_slots"] == 0


# Tenants


def test_another_tenant_does_not_reuse_a_cached_prompt(
        cached: LlamaEngine, plain: LlamaEngine) -> None:
    messages = office("Is the office open on Saturday?")
    own = chat(cached, messages, tenant="alpha")
    other = chat(cached, messages, tenant="beta")
    assert other.outcome.cached_tokens == 0  # read whole, as the first time
    assert own.text == other.text == chat(plain, messages).text
    assert chat(cached, messages, tenant="alpha").outcome.cached_tokens > 0  # its own


def test_a_shared_prompt_is_reused_across_tenants_up_to_its_end(
        cached: LlamaEngine, plain: LlamaEngine) -> None:
    shared = template_head(cached.prompter, PERSONA)
    assert shared  # the persona and the user turn's header
    first = [{"role": "system", "content": PERSONA}, {"role": "user", "content": QUESTION}]
    other = [{"role": "system", "content": PERSONA},
             {"role": "user", "content": "What is the capital of France?"}]
    chat(cached, first, tenant="gamma")
    result = chat(cached, other, tenant="delta")
    assert result.outcome.cached_tokens == whole_chunks(cached, shared) > 0
    assert result.text == chat(plain, other).text
    # the same question too: not beyond the shared persona (gamma's question is gamma's)
    same = chat(cached, first, tenant="delta")
    assert same.outcome.cached_tokens == whole_chunks(cached, shared)
    assert same.text == chat(plain, first).text


def test_the_template_head_is_shared_by_every_tenant(cached: LlamaEngine) -> None:
    messages = [{"role": "user", "content": "Name a fruit."}]
    for tenant in ("epsilon", "zeta"):
        result = chat(cached, messages, tenant=tenant)
        assert result.outcome.cached_tokens >= len(cached._scheduler.head) > 0


# Host memory


def test_a_sequence_evicted_to_host_memory_is_restored_with_the_same_answer(
        plain: LlamaEngine) -> None:
    eng = cached_engine(slots=2)
    try:
        first = chat(eng, office(QUESTION), tenant="host")
        for text in ("Say hello in French.", "List five colours."):  # both slots taken
            alone = [{"role": "system", "content": f"{text} {PERSONA}"},  # nothing in common
                     {"role": "user", "content": text}]
            chat(eng, alone, tenant="other", max_tokens=8)
        info = eng.cache_info()
        assert info["prompt_cache_saved"] >= 1 and info["prompt_cache_host_entries"] >= 1
        assert info["prompt_cache_host_bytes"] > 0
        assert not any(e is not None and e.scope == "host" for e in eng._scheduler.kept)
        turn2 = office(QUESTION, first.text, FOLLOW_UP)
        second = chat(eng, turn2, tenant="host")
        assert eng.cache_info()["prompt_cache_restored"] == 1
        assert second.outcome.cached_tokens == whole_chunks(
            eng, eng.prompter.render(office(QUESTION)).tokens) > 0
        assert second.text == chat(plain, turn2).text
        assert_entries_hold_their_kv(eng)
    finally:
        eng.close()


def test_host_memory_keeps_to_its_budget(plain: LlamaEngine) -> None:
    eng = cached_engine(slots=1, prompt_cache_mib=1)  # less than one saved sequence
    try:
        chat(eng, office(QUESTION), tenant="tight")
        chat(eng, [{"role": "system", "content": PERSONA}, {"role": "user", "content": "Hi."}],
             tenant="other", max_tokens=4)
        info = eng.cache_info()
        assert info["prompt_cache_host_entries"] == 0 and info["prompt_cache_host_bytes"] == 0
        result = chat(eng, office(QUESTION), tenant="tight")  # read again, same answer
        assert result.outcome.cached_tokens == 0
        assert result.text == chat(plain, office(QUESTION)).text
    finally:
        eng.close()


# Ends that are not normal


def test_a_cancelled_or_timed_out_job_keeps_only_what_it_decoded(
        cached: LlamaEngine, plain: LlamaEngine) -> None:
    messages = office("Describe each room in detail.")
    for end in ("cancel", "timeout"):
        req = dataclasses.replace(request(cached, "", 400, messages=messages), tenant=end)
        gen = cached.submit(req)
        for piece in gen.pieces(0.02):
            if piece is not None and piece.tokens:
                if end == "cancel":
                    gen.cancel()
                else:  # its deadline passes now
                    gen.request = dataclasses.replace(req, deadline=0.0)  # type: ignore[attr-defined]
        assert gen.outcome.finish_reason == ("cancelled" if end == "cancel" else "timeout")
        assert_entries_hold_their_kv(cached)
        again = chat(cached, messages, tenant=end)
        assert again.outcome.cached_tokens > 0
        assert again.text == chat(plain, messages).text


def test_a_failed_decode_leaves_no_entry(cached: LlamaEngine,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sched = cached._scheduler
    poison = max(cached.llm.tokenize(b" Xylophonist", add_bos=False))
    decode = sched._decode

    def failing(n_tokens: int) -> int:
        if any(sched.batch.token[i] == poison for i in range(n_tokens)):
            return -3
        return decode(n_tokens)

    messages = office(QUESTION + " Ask the Xylophonist.")
    monkeypatch.setattr(sched, "_decode", failing)
    result = chat(cached, messages, tenant="faulty")
    assert result.outcome.finish_reason == "error"
    assert_entries_hold_their_kv(cached)
    assert not any(e is not None and e.scope == "faulty" for e in sched.kept)
    monkeypatch.undo()
    assert chat(cached, messages, tenant="faulty").outcome.cached_tokens == 0


# Deleted conversations


def test_forgetting_a_conversation_drops_its_entries_in_slots_and_host_memory() -> None:
    eng = cached_engine(slots=1)
    try:
        chat(eng, office(QUESTION), tenant="acme", conversation="c1")
        chat(eng, [{"role": "user", "content": "Where is the coffee machine?"}],
             tenant="acme", conversation="c2")
        assert eng.cache_info()["prompt_cache_host_entries"] == 1  # c1, evicted by c2
        eng.forget_conversation("other-tenant", "c1")  # another tenant's c1: not this one
        eng.forget_conversation("acme", "c2")
        wait_until(lambda: eng.cache_info()["prompt_cache_slots"] == 0)
        assert eng.cache_info()["prompt_cache_host_entries"] == 1
        eng.forget_conversation("acme", "c1")
        wait_until(lambda: eng.cache_info()["prompt_cache_host_entries"] == 0)
        assert chat(eng, office(QUESTION), tenant="acme").outcome.cached_tokens == 0
    finally:
        eng.close()


# The bookkeeping alone


def test_host_memory_drops_the_least_recently_used_first() -> None:
    host = HostCache(budget=250)
    sharing = Sharing([])
    a, b, c = (Entry(list(range(k, k + 40)), "t", state=b"x" * 100) for k in (0, 100, 200))
    assert host.put(a) and host.put(b)
    assert host.put(c)  # over the budget: a, the oldest, goes
    assert host.best(a.tokens, "t", sharing) == (None, 0)
    assert host.best([*c.tokens, 7], "t", sharing) == (c, 40)
    assert host.bytes == 200 and len(host) == 2
    assert not host.put(Entry(list(range(40)), "t", state=b"x" * 251))  # never fits


def test_a_longer_entry_replaces_the_one_it_begins_with() -> None:
    host = HostCache(budget=1000)
    turn1 = Entry(list(range(30)), "t", "c", state=b"x" * 10)
    turn2 = Entry(list(range(60)), "t", "c", state=b"x" * 20)
    other = Entry(list(range(30)), "u", state=b"x" * 10)  # another tenant's: kept
    for entry in (turn1, other, turn2):
        host.put(entry)
    assert len(host) == 2 and host.bytes == 30
    assert host.forget("t", "c") == 1 and len(host) == 1


def test_another_tenant_may_reuse_only_a_shared_prefix() -> None:
    shared = list(range(20))
    sharing = Sharing([shared])
    entry = Entry([*shared, *range(100, 140)], "owner")
    mine = [*shared, *range(100, 130), 999]
    assert sharing.usable(mine, "owner", entry) == 50
    assert sharing.usable(mine, "stranger", entry) == 20
    private = Entry([*range(500, 560)], "owner")
    assert sharing.usable([*range(500, 550), 1], "stranger", private) == 0
    assert sharing.usable([*range(500, 510), 1], "owner", private) == 0  # under MIN_REUSE
