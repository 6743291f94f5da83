"""Queues served by a remote OpenAI-compatible server, end to end: llama-cpp-python's own
server (``python -m llama_cpp.server``, the demo model, an API key) is the upstream of
real chatq workers, beside a local worker on the same model.

- A job on the upstream queue succeeds and streams over SSE with the events of a local
  job; its text and token count are the upstream's own for the same greedy request.
- The OpenAI SDK works on it unchanged.
- Cancel mid-stream stops the upstream request (the server logs its client gone, and
  is free at once for the next request).
- A stopped upstream: the job retries, then fails ``upstream_error``; a wrong key: it
  fails at once (401 is not retried), and no key is in any chatq log.
- A conversation continues across two turns, the history sent as messages.
- The heartbeat and ``/v1/queues`` show the upstream (no credentials); admission
  refuses what an OpenAI upstream cannot honour and counts no tokens for it.

llama-cpp-python's server reports no usage in a stream (it ignores
``stream_options``), so the job's completion tokens are counted from the stream and its
prompt tokens are unknown (0); the unit tests (tests/workers/test_upstream_engine.py)
cover a server that reports usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from ops.devstack import free_port
from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY, DEV_API_KEY
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import TERMINAL, SseStream, hi, stream_job, submit, wait_done

KEY = "chatq-test-upstream-key-7f3a9c"  # the upstream server's key
WRONG_KEY = "chatq-test-wrong-key-51e2d0"
MODEL = "smol-upstream"
LOCAL = "smollm2-135m"
QUEUES = ("cpu", "upstream", "upstream-badkey", "upstream-down")

REGISTRY = """
[models."smol-upstream"]
queue = "upstream"
slots = 2
[models."smol-upstream".upstream]
kind = "llama.cpp"
url = "{url}"
model = "smol-upstream"
api_key_env = "CHATQ_TEST_UPSTREAM_KEY"
timeout_s = 60
retries = 2
backoff_s = 0.3
[models."smol-upstream".defaults]
max_tokens = 32

[models."wrong-key"]
queue = "upstream-badkey"
[models."wrong-key".upstream]
kind = "llama.cpp"
url = "{url}"
model = "smol-upstream"
api_key_env = "CHATQ_TEST_UPSTREAM_WRONG_KEY"
retries = 2
backoff_s = 0.3

[models."stopped"]
queue = "upstream-down"
[models."stopped".upstream]
kind = "llama.cpp"
url = "http://127.0.0.1:{dead_port}/v1"
model = "smol-upstream"
retries = 2
backoff_s = 0.3
timeout_s = 5

[models."strict-openai"]
queue = "upstream-openai"
[models."strict-openai".upstream]
url = "{url}"
model = "smol-upstream"
[models."strict-openai".defaults]
stop = ["\\nUser:", "\\nSystem:"]
"""


def demo_gguf() -> Path:
    registry = Registry.load(DEFAULT_REGISTRY)
    return registry.gguf_path(registry.models[registry.default_name])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    """chatq with a local worker (queue cpu) and three upstream workers, and the
    upstream: llama-cpp-python's server on the demo model, with an API key."""
    root = tmp_path_factory.mktemp("upstream")
    stack = new_stack(root, "stack")
    try:
        url = stack.start_llama_server(demo_gguf(), api_key=KEY, alias=MODEL)
        registry = root / "models.toml"
        registry.write_text(DEFAULT_REGISTRY.read_text()
                            + REGISTRY.format(url=url, dead_port=free_port()))
        stack.env.update({"CHATQ_REGISTRY": str(registry), "CHATQ_TEST_UPSTREAM_URL": url,
                          "CHATQ_TEST_UPSTREAM_KEY": KEY,
                          "CHATQ_TEST_UPSTREAM_WRONG_KEY": WRONG_KEY})
        yield start_chatq(stack, queues=QUEUES)
    finally:
        stack.stop()


@pytest.fixture
def client(up: Chatq) -> Iterator[httpx.Client]:
    with up.client(timeout=120) as c:
        yield c


def upstream_url(up: Chatq) -> str:
    return up.stack.env["CHATQ_TEST_UPSTREAM_URL"]


def direct(up: Chatq, messages: list[dict[str, str]], **params: Any) -> dict[str, Any]:
    """The same request straight to the upstream, not streamed (its usage included)."""
    response = httpx.post(f"{upstream_url(up)}/chat/completions", timeout=120,
                          headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": MODEL, "messages": messages, **params})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def shape(stream: SseStream) -> list[str]:
    """The kinds of events after the first token, runs of tokens as one."""
    kinds = [e.event for e in stream.events]
    kinds = kinds[kinds.index("token"):]
    return [k for i, k in enumerate(kinds) if k != "token" or kinds[i - 1] != "token"]


def chatq_logs(up: Chatq) -> str:
    return "\n".join(p.read_text(errors="replace") for p in up.stack.data_dir.glob("*.log")
                     if p.name != "llama-server.log")


def worker_lines(up: Chatq, queue: str, job_id: str) -> list[dict[str, Any]]:
    lines = []
    for line in up.workers[queue].log().splitlines():
        if job_id in line and line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_an_upstream_job_streams_like_a_local_job_with_the_upstreams_tokens(
        up: Chatq, client: httpx.Client) -> None:
    question = "Name three colors."
    params = {"max_tokens": 64, "temperature": 0, "seed": 1}
    streams, jobs = {}, {}
    for model in (LOCAL, MODEL):
        job = submit(client, hi(question, model=model, **params))
        streams[model] = stream_job(client, job["id"])
        jobs[model] = client.get(f"/v1/jobs/{job['id']}").json()
    job, stream = jobs[MODEL], streams[MODEL]
    assert (job["status"], job["queue"], job["error"]) == ("succeeded", "upstream", None)
    assert shape(stream) == shape(streams[LOCAL]) == ["token", "status", "done"]
    seqs = [e.id for e in stream.tokens]
    assert seqs == list(range(1, len(seqs) + 1))
    assert stream.text == job["output"] == stream.last.data["output"]
    assert job["timings"]["ttft_ms"] is not None and job["timings"]["duration_ms"] > 0
    # The upstream's own answer and token count for the same greedy request.
    answer = direct(up, [{"role": "user", "content": question}], top_p=0.95, **params)
    assert job["output"] == answer["choices"][0]["message"]["content"]
    assert job["finish_reason"] == answer["choices"][0]["finish_reason"] == "stop"
    # Counted from the stream (one token a chunk): the upstream's own count. (When an
    # answer hits max_tokens, llama-cpp-python's stream drops its last token's text.)
    assert job["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"]
    assert job["usage"]["completion_tokens"] == len(stream.tokens) > 0
    assert job["usage"]["prompt_tokens"] == 0  # not reported in llama-cpp-python's streams


def test_the_openai_sdk_works_on_an_upstream_queue(up: Chatq) -> None:
    sdk = openai.OpenAI(base_url=f"{up.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    stream = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="wrong-key", max_tokens=4,
                                    messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    assert "HTTP 401" in str(caught.value) and WRONG_KEY not in str(caught.value)


def test_cancel_mid_stream_stops_the_upstream_request(up: Chatq, client: httpx.Client) -> None:
    server_log = next(p for p in up.stack.procs if p.name == "llama-server")
    gone_before = server_log.log().count("Disconnected from client")
    job = submit(client, hi("Write a very long story about a dragon and a knight.",
                            model=MODEL, max_tokens=400, temperature=0.8))
    deadline = time.monotonic() + 60
    while len(client.get(f"/v1/jobs/{job['id']}").json()["output"]) < 10:
        assert time.monotonic() < deadline, "no output from the upstream"
        time.sleep(0.05)
    asked = time.monotonic()
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    done = wait_done(client, job["id"])
    took = time.monotonic() - asked
    assert done["status"] == "cancelled" and took < 3, (done["status"], took)
    assert done["output"] and done["usage"]["completion_tokens"] < 400
    # The upstream saw its client go and stopped: it logs it, and is free at once
    # (llama-cpp-python's server generates one answer at a time).
    deadline = time.monotonic() + 10
    while server_log.log().count("Disconnected from client") <= gone_before:
        assert time.monotonic() < deadline, "the upstream never saw chatq's request close"
        time.sleep(0.1)
    started = time.monotonic()
    direct(up, [{"role": "user", "content": "Hi"}], max_tokens=2)
    assert time.monotonic() - started < 5


def test_a_stopped_upstream_is_retried_then_fails_with_upstream_error(
        up: Chatq, client: httpx.Client) -> None:
    started = time.monotonic()
    job = wait_done(client, submit(client, hi(model="stopped"))["id"])
    assert job["status"] == "failed"
    assert job["error"]["code"] == "upstream_error"
    assert "failed 3 time(s)" in job["error"]["message"]
    assert "ConnectError" in job["error"]["message"]
    assert time.monotonic() - started >= 0.3 + 0.6  # two backoffs
    retries = [line for line in worker_lines(up, "upstream-down", job["id"])
               if line.get("msg") == "upstream request failed; retrying"]
    assert [line["attempt"] for line in retries] == [1, 2]


def test_a_wrong_key_fails_at_once_and_no_key_is_ever_logged(
        up: Chatq, client: httpx.Client) -> None:
    started = time.monotonic()
    job = wait_done(client, submit(client, hi(model="wrong-key"))["id"])
    assert time.monotonic() - started < 5
    assert (job["status"], job["error"]["code"]) == ("failed", "upstream_error")
    assert "HTTP 401" in job["error"]["message"]
    assert "$CHATQ_TEST_UPSTREAM_WRONG_KEY" in job["error"]["message"]
    lines = worker_lines(up, "upstream-badkey", job["id"])
    assert not [line for line in lines if "retrying" in line.get("msg", "")]
    assert any(line.get("code") == "upstream_error" for line in lines)
    assert WRONG_KEY not in json.dumps(job)
    logs = chatq_logs(up)
    assert "upstream failed the job" in logs  # the logs are there, and hold no key
    assert KEY not in logs and WRONG_KEY not in logs


def test_a_conversation_continues_across_two_turns_on_the_upstream(
        up: Chatq, client: httpx.Client) -> None:
    params = {"max_tokens": 16, "temperature": 0, "seed": 3}
    first_turn = "My name is Ada. Greet me."
    first = client.post("/v1/jobs", headers={"Prefer": "wait=60"},
                        json=hi(first_turn, model=MODEL, **params)).json()
    assert first["status"] == "succeeded", first
    second = client.post("/v1/jobs", headers={"Prefer": "wait=60"}, json=hi(
        "What is my name?", model=MODEL, conversation_id=first["conversation_id"],
        **params)).json()
    assert second["status"] == "succeeded", second
    assert second["history_messages"] == 2 and second["history_trimmed"] == 0
    # The upstream was sent the whole conversation: its greedy answer to it is the job's.
    conversation = [{"role": "user", "content": first_turn},
                     {"role": "assistant", "content": first["output"]},
                     {"role": "user", "content": "What is my name?"}]
    answer = direct(up, conversation, top_p=0.95, **params)
    assert second["output"] == answer["choices"][0]["message"]["content"]
    stored = client.get(f"/v1/conversations/{first['conversation_id']}").json()
    assert [m["content"] for m in stored["messages"]] == [
        m["content"] for m in conversation] + [second["output"]]


def test_heartbeat_and_queues_show_the_upstream_without_credentials(
        up: Chatq, client: httpx.Client) -> None:
    beat = up.heartbeat("upstream")
    assert beat["upstream_url"] == upstream_url(up)
    assert (beat["upstream_model"], beat["upstream_kind"], beat["slots"]) == (
        MODEL, "llama.cpp", "2")
    assert "slots_busy" in beat and "gpu_layers" not in beat
    assert KEY not in json.dumps(beat)
    deadline = time.monotonic() + 5
    while True:  # a beat may still count the previous test's job (one beat of lag)
        queues = {q["queue"]: q for q in client.get("/v1/queues").json()["data"]}
        (worker,) = queues["upstream"]["workers"]
        if worker["slots_busy"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert worker["upstream"] == {"kind": "llama.cpp", "url": upstream_url(up), "model": MODEL}
    assert worker["slots"] == 2 and worker["slots_busy"] == 0
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models[MODEL]["context_size"] is None and models[MODEL]["ready"] is True


def test_admission_refuses_what_an_openai_upstream_cannot_take_and_counts_no_tokens(
        client: httpx.Client) -> None:
    refused = client.post("/v1/jobs", json=hi(model="strict-openai", stop=["a", "b", "c"]))
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["details"][0]["field"] == "stop"
    long_prompt = "word " * 3000  # over the demo model's context: its server decides
    local = client.post("/v1/jobs", json=hi(long_prompt, model=LOCAL))
    assert local.status_code == 400 and local.json()["error"]["code"] == \
        "context_length_exceeded"
    job = submit(client, hi(long_prompt, model=MODEL))
    assert wait_done(client, job["id"])["status"] in TERMINAL - {"succeeded"}
