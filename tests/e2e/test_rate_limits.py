"""Per-tenant rate limits (issue 26) through the HTTP API and the ``openai`` SDK: requests,
tokens and concurrent jobs per tenant, each a 429 ``rate_limit_exceeded`` with OpenAI's
``x-ratelimit-*`` headers and ``Retry-After``; the headers on admitted requests too; one
tenant's limit never touches another tenant; a refused request leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest

from shared.registry import Registry
from shared.settings import DEFAULT_REGISTRY
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import all_slots_busy, hi, submit, wait_done

MODEL = Registry.load(DEFAULT_REGISTRY).default_name
LIMITS = {"alpha": {"requests_per_minute": 3},
          "beta": {"tokens_per_minute": 400},
          "gamma": {"concurrent_jobs": 1}}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    stack = new_stack(tmp_path_factory.mktemp("rates"), "stack")
    stack.env["CHATQ_API__KEYS"] = "ka=alpha,kb=beta,kg=gamma,kd=delta"
    stack.env["CHATQ_API__RATE_LIMITS"] = json.dumps(LIMITS)
    try:
        yield start_chatq(stack)
    finally:
        stack.stop()


def test_requests_per_minute_then_429_with_openai_headers(limited: Chatq) -> None:
    with limited.client(key="ka") as alpha, limited.client(key="kd") as delta:
        remaining = []
        for _ in range(3):
            response = alpha.post("/v1/jobs", json=hi(max_tokens=2),
                                  headers={"Prefer": "respond-async"})
            if response.status_code == 429:  # a new minute began: the window is fresh
                continue
            assert response.status_code == 202, response.text
            assert response.headers["x-ratelimit-limit-requests"] == "3"
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
        while (refused := alpha.post("/v1/jobs", json=hi(max_tokens=2))).status_code != 429:
            assert refused.status_code == 202  # the minute turned over: fill it again
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert "requests per min" in refused.json()["error"]["message"]
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"].endswith("s")
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert remaining == sorted(remaining, reverse=True)
        # delta has no limits: untouched by alpha's, and no rate headers
        other = delta.post("/v1/jobs", json=hi(max_tokens=2), headers={"Prefer": "respond-async"})
        assert other.status_code == 202 and "x-ratelimit-limit-requests" not in other.headers


def test_the_openai_sdk_sees_a_rate_limit_error(limited: Chatq) -> None:
    client = openai.OpenAI(base_url=f"{limited.base_url}/v1", api_key="ka", max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(10):  # alpha's three a minute are spent (or are, after three more)
            client.chat.completions.create(model=MODEL, max_tokens=2,
                                           messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 429
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "3"
    body = caught.value.body
    assert isinstance(body, dict) and body["code"] == "rate_limit_exceeded"
    assert body["type"] == "rate_limit_error"


def test_tokens_per_minute_count_prompt_and_max_tokens(limited: Chatq) -> None:
    with limited.client(key="kb") as beta:
        too_many = beta.post("/v1/jobs", json=hi(max_tokens=500))
        assert too_many.status_code == 429, too_many.text
        assert "tokens per min" in too_many.json()["error"]["message"]
        assert too_many.headers["x-ratelimit-limit-tokens"] == "400"
        short = hi("What is 2+2? Answer with the number only.", max_tokens=300)
        ok = beta.post("/v1/jobs", json=short, headers={"Prefer": "respond-async"})
        assert ok.status_code == 202, ok.text
        left = int(ok.headers["x-ratelimit-remaining-tokens"])
        assert 0 < left < 400 - 300  # the prompt's tokens count too
        done = wait_done(beta, ok.json()["id"])
        assert done["usage"]["completion_tokens"] < 100
        # settled when it ended: what it did not use is back (far more than the next takes)
        after = beta.post("/v1/jobs", json=hi(max_tokens=8), headers={"Prefer": "respond-async"})
        assert after.status_code == 202, after.text
        assert int(after.headers["x-ratelimit-remaining-tokens"]) > left


def test_concurrent_jobs_and_room_again_when_one_ends(limited: Chatq) -> None:
    with limited.client(key="kg") as gamma, limited.client(key="kd") as delta:
        with all_slots_busy(delta):  # gamma's first job waits: unfinished, it counts
            first = submit(gamma, hi(max_tokens=4))
            jobs_before = set(limited.redis().keys("chatq:job:*"))
            second = gamma.post("/v1/jobs", json=hi(max_tokens=4))
            assert second.status_code == 429, second.text
            assert "concurrent jobs" in second.json()["error"]["message"]
            assert second.headers["Retry-After"] == "1"
            assert set(limited.redis().keys("chatq:job:*")) == jobs_before  # nothing stored
        assert wait_done(gamma, first["id"])["status"] == "succeeded"
        third = gamma.post("/v1/jobs", json=hi(max_tokens=4), headers={"Prefer": "respond-async"})
        assert third.status_code == 202, third.text
