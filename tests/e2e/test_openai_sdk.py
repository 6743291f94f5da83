"""The official openai Python SDK against a running chatq."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.helpers import LONG, all_slots_busy, hi, submit


@pytest.fixture
def sdk(chatq: Chatq) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)


def test_non_stream_completion(sdk: openai.OpenAI, client: httpx.Client) -> None:
    completion = sdk.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=16)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("job_")  # the chatq job id
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16
    job = client.get(f"/v1/jobs/{completion.id}").json()
    assert job["output"] == choice.message.content and job["status"] == "succeeded"


def test_stream_completion_with_usage(sdk: openai.OpenAI, client: httpx.Client) -> None:
    chunks = list(sdk.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": LONG}],
        max_tokens=40, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == 40
    assert client.get(f"/v1/jobs/{chunks[0].id}").json()["output"] == text


def test_stream_without_usage_has_no_usage_chunk(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
        stream=True))
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_models_list(sdk: openai.OpenAI) -> None:
    assert "smollm2-135m" in [m.id for m in sdk.models.list()]


def test_sdk_raises_its_own_error_classes(sdk: openai.OpenAI) -> None:
    # (AuthenticationError: tests/e2e/test_openai_compat.py, on a stack with keys)
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError, match="maximum context length is 2048 tokens"):
        sdk.chat.completions.create(model="smollm2-135m", max_tokens=4000,
                                    messages=[{"role": "user", "content": "x"}])


def test_sdk_rate_limit_error_on_a_full_queue(make_stack) -> None:  # type: ignore[no-untyped-def]
    stack = make_stack(env={"CHATQ_API__MAX_QUEUE_DEPTH": "1"})
    sdk = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=DEV_API_KEY, max_retries=0)
    with stack.client() as c, all_slots_busy(c):
        submit(c, hi(max_tokens=4))
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(model="smollm2-135m",
                                        messages=[{"role": "user", "content": "hi"}])


def _wait_status(client: httpx.Client, job_id: str, status: str) -> dict[str, object]:
    # A deadline for a stuck job, not a speed: on a busy machine 16 tokens took over 10 s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == status:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not become {status}: {job}")


def test_stream_client_disconnect_cancels_the_job(client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 1000,
            "temperature": 0, "stream": True}
    job_id = None
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                job_id = line.split('"id":"')[1].split('"')[0]
                break  # hang up mid-answer
    assert job_id is not None
    job = _wait_status(client, job_id, "cancelled")
    assert job["usage"]["completion_tokens"] < 1000  # type: ignore[index]


def test_non_stream_client_disconnect_cancels_the_job(chatq: Chatq, client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 1000,
            "temperature": 0, "metadata": {}}
    with chatq.client(timeout=httpx.Timeout(30, read=1.0)) as impatient, \
            pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json=body)
    # find the job it started: the newest running or cancelled one on the queue
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        recent = chatq.redis().lrange("chatq:stats:cpu:recent", 0, 0)
        if recent and '"cancelled"' in recent[0]:
            break
        time.sleep(0.1)
    assert recent and '"cancelled"' in recent[0]


def test_job_posted_to_v1_jobs_keeps_running_without_a_listener(client: httpx.Client) -> None:
    job = submit(client, hi(max_tokens=16))
    assert _wait_status(client, job["id"], "succeeded")["output"]

