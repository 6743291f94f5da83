"""OpenAI compatibility that never silently ignores (issue 12), through real clients.

Against a running chatq: the official ``openai`` SDK, LangChain's ``ChatOpenAI`` and
LiteLLM. Every parameter is honoured (sampling, logprobs, structured output) or
refused with a ``400`` naming it. The demo model is tiny: these tests check
structure and validity, never the quality of an answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq
from tests.helpers import hi, submit, wait_done

MODEL = "smollm2-135m"
ASK = [{"role": "user", "content": "Write one sentence about the sea."}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {
    "type": "object", "properties": {"x": {"type": "integer"}}}}}


@pytest.fixture
def sdk(chatq: Chatq) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0) as client:
        yield client


def _greedy(sdk: openai.OpenAI, **extra: Any) -> str:
    completion = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24,
                                             temperature=0, **extra)
    return completion.choices[0].message.content or ""


# -- refusals: a 400 naming the parameter -----------------------------------------------

REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"n": 2}, "n"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"functions": [{"name": "f", "parameters": {}}]}, "functions"),  # deprecated: tools
    ({"function_call": "auto"}, "function_call"),
    ({"tool_choice": "required"}, "tool_choice"),  # without tools
    ({"tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
     "response_format"),  # a forced call is the whole answer
    ({"temperature": 5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
    ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
    ({"logit_bias": {"x": 5}}, "logit_bias"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "number", "minimum": 0.5}}}},
     "response_format.json_schema.schema.minimum"),
]


@pytest.mark.parametrize(("extra", "param"), REFUSED, ids=[p for _, p in REFUSED])
def test_refusals_are_400_naming_the_parameter(
    sdk: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4, extra_body=extra)
    error = refused.value.body
    assert isinstance(error, dict) and error["param"] == param, error
    assert error["type"] == "invalid_request_error"


def test_unknown_fields_and_messages_are_400_naming_them(sdk: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": ASK, "frobnicate": 1}, "frobnicate"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "hi", "name": "bob"}]}, "messages.0.name"),
        ({"messages": ASK, "stream_options": {"include_obfuscation": True}},
         "stream_options.include_obfuscation"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
         "messages.0.content.0.type"),
        ({"messages": [*ASK, {"role": "tool", "content": "4"}]}, "messages[1].tool_call_id"),
        ({"messages": [{"role": "user", "content": "hi", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]},
         "messages[0].tool_calls"),
    ]
    for body, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.post("/chat/completions", body={"model": MODEL, "max_tokens": 4, **body},
                     cast_to=httpx.Response)
        error = refused.value.body
        assert isinstance(error, dict) and error["param"] == param, (body, error)


def test_jobs_take_and_refuse_the_same_fields(client: httpx.Client) -> None:
    bad = client.post("/v1/jobs", json=hi(response_format={"type": "json_schema", "json_schema": {
        "name": "n", "schema": {"type": "string", "pattern": "^x(?=a)$"}}}))
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["details"][0]["field"] == \
        "response_format.json_schema.schema.pattern"
    assert client.post("/v1/jobs", json=hi(logit_bias={"99999999": 1})).status_code == 422
    job = submit(client, hi(max_tokens=40, temperature=0, logprobs=True, top_logprobs=2,
                            response_format={"type": "json_object"}, top_k=10, min_p=0.1,
                            repeat_penalty=1.1, presence_penalty=0.5, frequency_penalty=0.5,
                            logit_bias={"28": -5}))
    done = wait_done(client, job["id"])
    assert done["status"] == "succeeded"
    assert "".join(t["token"] for t in done["logprobs"]) == done["output"]
    assert all(len(t["top_logprobs"]) == 2 for t in done["logprobs"])
    assert client.get(f"/v1/jobs/{job['id']}").json()["logprobs"] == done["logprobs"]
    if done["finish_reason"] == "stop":
        assert isinstance(json.loads(done["output"]), dict)


def test_unknown_routes_and_methods_answer_chatqs_error(client: httpx.Client) -> None:
    for method, path, status in (("POST", "/v1/nothing-here", 404),
                                 ("DELETE", "/v1/chat/completions", 405)):
        response = client.request(method, path)
        assert response.status_code == status
        assert set(response.json()["error"]) >= {"code", "message"}


def test_wrong_key_is_authentication_error_where_keys_are_configured(
    make_stack,  # type: ignore[no-untyped-def]
) -> None:
    stack = make_stack(with_worker=False, env={"CHATQ_API__KEYS": "k-real=acme"})
    with (openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key="sk-anything",
                        max_retries=0) as bad, pytest.raises(openai.AuthenticationError)):
        bad.models.list()


# -- logprobs --------------------------------------------------------------------------

def test_logprobs_add_up_to_the_answer(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20,
                                             logprobs=True, top_logprobs=3)
    choice = completion.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    tokens = choice.logprobs.content
    assert "".join(t.token for t in tokens) == choice.message.content
    for t in tokens:
        assert t.logprob <= 0 and t.bytes is not None
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
    plain = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_streamed_logprobs_add_up_to_the_answer(sdk: openai.OpenAI) -> None:
    chunks = list(sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=20,
                                              logprobs=True, top_logprobs=1, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    tokens = [t for c in chunks if c.choices[0].logprobs
              for t in c.choices[0].logprobs.content or []]
    assert text and "".join(t.token for t in tokens) == text
    assert all(len(t.top_logprobs) == 1 for t in tokens)


# -- sampling parameters take effect -----------------------------------------------------

def test_penalties_and_logit_bias_change_greedy_output(sdk: openai.OpenAI,
                                                       client: httpx.Client) -> None:
    base = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24, temperature=0,
                                       logprobs=True)
    text = base.choices[0].message.content
    assert base.choices[0].logprobs and base.choices[0].logprobs.content
    assert _greedy(sdk) == text  # greedy is deterministic
    first = base.choices[0].logprobs.content[0].bytes
    token_id = _token_id(client, bytes(first or []))
    assert _greedy(sdk, logit_bias={str(token_id): -100}) != text
    for param, value in (("presence_penalty", 2.0), ("frequency_penalty", 2.0)):
        assert _greedy(sdk, extra_body={param: value}) != text, param
    assert _greedy(sdk, extra_body={"repeat_penalty": 2.0}) != text
    assert _greedy(sdk, extra_body={"top_k": 1, "min_p": 0.5}) == text  # greedy stays greedy


def _token_id(client: httpx.Client, piece: bytes) -> int:
    """The token id of ``piece``, from the model's vocabulary (its GGUF, vocab only)."""
    from llama_cpp import Llama

    from shared.registry import Registry
    from shared.settings import DEFAULT_REGISTRY

    registry = Registry.load(DEFAULT_REGISTRY)
    spec = registry.get(MODEL)
    assert spec is not None
    llm = Llama(model_path=str(registry.gguf_path(spec)), vocab_only=True, verbose=False)
    try:
        tokens = llm.tokenize(piece, add_bos=False, special=False)
    finally:
        llm.close()
    assert len(tokens) == 1, tokens
    return int(tokens[0])


def test_seed_makes_sampling_reproducible(sdk: openai.OpenAI) -> None:
    def draw(seed: int) -> str:
        return _greedy_free(sdk, seed)

    assert draw(7) == draw(7)
    assert len({draw(s) for s in (1, 2, 3, 4)}) > 1  # and the seed matters


def _greedy_free(sdk: openai.OpenAI, seed: int) -> str:
    completion = sdk.chat.completions.create(model=MODEL, messages=ASK, max_tokens=24,
                                             temperature=1.0, seed=seed)
    return completion.choices[0].message.content or ""


# -- structured output -------------------------------------------------------------------

def test_json_object_output_parses(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, max_tokens=120, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Describe a cat as JSON with name and age."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(json.loads(choice.message.content or ""), dict)


PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 24},
                   "age": {"type": "integer"},
                   "colour": {"enum": ["red", "green", "blue"]},
                   "pets": {"type": "array", "items": {"type": "string", "maxLength": 12},
                            "maxItems": 2}},
    "required": ["name", "age", "colour", "pets"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(sdk: openai.OpenAI, stream: bool) -> None:
    request: dict[str, Any] = {
        "model": MODEL, "max_tokens": 150, "temperature": 0,
        "messages": [{"role": "user", "content": "Invent a person."}],
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "person", "schema": PERSON_SCHEMA,
                                            "strict": True}}}
    if stream:
        chunks = list(sdk.chat.completions.create(stream=True, **request))
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        finish = chunks[-1].choices[0].finish_reason
    else:
        choice = sdk.chat.completions.create(**request).choices[0]
        text, finish = choice.message.content or "", choice.finish_reason
    assert finish == "stop", text
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_a_cut_structured_answer_says_length(sdk: openai.OpenAI) -> None:
    choice = sdk.chat.completions.create(
        model=MODEL, max_tokens=3, temperature=0, messages=ASK,
        response_format={"type": "json_schema", "json_schema": {
            "name": "p", "schema": PERSON_SCHEMA}}).choices[0]
    assert choice.finish_reason == "length"


# -- other clients -----------------------------------------------------------------------

class City(BaseModel):
    name: str = Field(max_length=20)
    country: str = Field(max_length=20)
    population: int


def test_langchain_with_structured_output_returns_the_model(chatq: Chatq) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                     temperature=0, max_tokens=120, max_retries=0)  # type: ignore[arg-type]
    city = llm.with_structured_output(City).invoke("Name a big city.")
    assert isinstance(city, City)


def test_litellm_recognises_a_context_overflow(chatq: Chatq, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model=f"openai/{MODEL}", api_base=f"{chatq.base_url}/v1",
                           api_key=DEV_API_KEY, max_tokens=4000, num_retries=0,
                           messages=[{"role": "user", "content": "hello"}])
