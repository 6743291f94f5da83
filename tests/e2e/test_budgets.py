"""Input budgets (issue 27): every size a caller controls is refused quickly with a 4xx
naming the field and the limit, through the HTTP API; a large but legal request does
not hold the API's event loop (``/healthz`` keeps answering while it is processed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from shared.settings import LimitSettings
from tests.helpers import hi

LIMITS = LimitSettings()
OPENAI = "/v1/chat/completions"


def refused(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()["error"])


def field_of(error: dict[str, Any]) -> str:
    """The field an error names: chatq's details, or OpenAI's ``param``."""
    if "param" in error:
        return str(error["param"])
    return str(error["details"][0]["field"])


@pytest.mark.parametrize(("fields", "field", "limit"), [
    ({"stop": "x" * 1_000_000}, "stop", LIMITS.max_stop_chars),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", LIMITS.max_metadata_pairs),
    ({"metadata": {"k" * 65: "v"}}, "metadata", LIMITS.max_metadata_key_chars),
    ({"metadata": {"k": "v" * 513}}, "metadata.k", LIMITS.max_metadata_value_chars),
    ({"metadata": {"k": {"deep": ["v" * 600]}}}, "metadata.k",
     LIMITS.max_metadata_value_chars),
    ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias", LIMITS.max_logit_bias),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]},
     "tools", LIMITS.max_tools),
    ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "description": "d" * 400_000}}}]},
     "tools", LIMITS.max_tools_chars),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "description": "d" * 200_000}}}},
     "response_format.json_schema.schema", LIMITS.max_schema_chars),
])
@pytest.mark.parametrize("path", ["/v1/jobs", OPENAI])
def test_each_size_over_its_budget_is_a_400_naming_the_field_and_the_limit(
    client: httpx.Client, path: str, fields: dict[str, Any], field: str, limit: int,
) -> None:
    body = hi(**fields)
    if path == OPENAI and field.startswith("metadata") and "deep" in str(fields):
        body["metadata"] = {"k": "v" * 600}  # OpenAI's metadata values are strings
    error = refused(client.post(path, json=body))
    assert field_of(error) == field
    assert str(limit) in error["message"]


def test_many_messages_are_refused_naming_messages(client: httpx.Client) -> None:
    many = [{"role": "user", "content": "hi"}] * (LIMITS.max_messages + 1)
    error = refused(client.post("/v1/jobs", json={"messages": many}))
    assert field_of(error) == "messages" and str(LIMITS.max_messages) in error["message"]


def test_a_prompt_that_cannot_fit_by_its_characters_is_refused_before_it_is_counted(
    client: httpx.Client,
) -> None:
    """Two messages of 999,999 characters: no tokenizer call (which took 20 s, and held
    every other tenant's submit behind one lock) decides this."""
    messages = [{"role": "user", "content": "x" * 999_999}] * 2
    error = refused(client.post("/v1/jobs", json={"messages": messages}))
    assert field_of(error) == "messages" and "cannot fit the context" in error["message"]
    prompt = refused(client.post("/v1/completions", json={"prompt": "y" * 200_000}))
    assert prompt["param"] == "prompt"
    inputs = refused(client.post("/v1/embeddings", json={"input": ["a", "z" * 200_000]}))
    assert inputs["param"] == "input[1]"


def test_more_text_than_a_request_may_bring_is_refused(client: httpx.Client) -> None:
    texts = ["t" * 100_000] * (LIMITS.max_input_chars // 100_000 + 1)
    error = refused(client.post("/v1/embeddings", json={"input": texts}))
    assert error["param"] == "input" and str(LIMITS.max_input_chars) in error["message"]


@pytest.mark.parametrize("path", ["/v1/jobs", OPENAI, "/invocations"])
def test_a_body_over_its_budget_is_413_before_it_is_parsed(client: httpx.Client,
                                                          path: str) -> None:
    big = b'{"messages": [{"role": "user", "content": "' + b"x" * LIMITS.max_body_bytes + b'"}]}'
    error = refused(client.post(path, content=big), 413)
    assert field_of(error) == "body" and error["code"] == "request_too_large"
    assert str(LIMITS.max_body_bytes) in error["message"]


def test_a_chunked_body_over_its_budget_is_413_too(client: httpx.Client) -> None:
    """No Content-Length: the bytes are counted as they come."""
    def chunks() -> Iterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(LIMITS.max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}]}'

    error = refused(client.post("/v1/jobs", content=chunks()), 413)
    assert error["code"] == "request_too_large"


@pytest.mark.parametrize("value", [True, "5", 5.5])
def test_max_tokens_must_be_an_integer_not_true(client: httpx.Client, value: Any) -> None:
    error = refused(client.post("/v1/jobs", json=hi(max_tokens=value)), 422)
    assert field_of(error) == "max_tokens"
    openai = refused(client.post(OPENAI, json=hi(max_tokens=value)))
    assert openai["param"] == "max_tokens"


@pytest.mark.parametrize(("fields", "field"), [
    ({"temperature": True}, "temperature"), ({"seed": False}, "seed"),
    ({"top_logprobs": True, "logprobs": True}, "top_logprobs"),
    ({"logit_bias": {"5": True}}, "logit_bias"),
])
def test_booleans_are_not_numbers(client: httpx.Client, fields: dict[str, Any],
                                  field: str) -> None:
    error = refused(client.post("/v1/jobs", json=hi(**fields)), 422)
    assert field_of(error).split(".")[0] == field


def one_of_consts(n: int) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "pick", "schema": {
        "type": "object", "properties": {"v": {"oneOf": [{"const": f"c{i}"} for i in range(n)]}},
        "required": ["v"]}}}


def test_healthz_answers_while_a_large_legal_schema_is_converted(client: httpx.Client) -> None:
    """A ``oneOf`` of 3,000 ``const`` branches (legal: well inside the schema budget)
    stopped ``/healthz`` for 40 s when its grammar was built on the event loop. Built
    in a worker thread, it holds no one up: ``/healthz`` keeps answering while the
    request is in flight (the request itself ends accepted, or refused naming
    ``response_format`` if its grammar takes too long)."""
    result: list[httpx.Response] = []
    body = hi(response_format=one_of_consts(3000), max_tokens=4)

    def send() -> None:
        with httpx.Client(base_url=str(client.base_url), headers=client.headers,
                          timeout=120) as other:
            result.append(other.post("/v1/jobs", json=body,
                                     headers={"Prefer": "respond-async"}))

    heavy = threading.Thread(target=send)
    heavy.start()
    latencies = []
    while heavy.is_alive():
        started = time.monotonic()
        assert client.get("/healthz", timeout=10).status_code == 200
        latencies.append(time.monotonic() - started)
    heavy.join()
    assert max(latencies, default=0) < 2.0, latencies  # not 40 s
    response = result[0]
    if response.status_code == 202:
        client.post(f"/v1/jobs/{response.json()['id']}/cancel")
    else:
        assert field_of(refused(response)).startswith("response_format")
