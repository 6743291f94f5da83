"""Tools (function calling) through the official openai SDK, LangChain and /v1/jobs,
against a running chatq with the tiny demo model: structure and validity, not quality."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq

MODEL = "smollm2-135m"
WEATHER_PARAMS: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMS: dict[str, Any] = {
    "type": "object", "properties": {"timezone": {"type": "string", "maxLength": 24}},
    "required": ["timezone"],
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description":
                                      "The current weather in a city.",
                                      "parameters": WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description":
                                      "The current time in a timezone.",
                                      "parameters": TIME_PARAMS}},
]
SCHEMAS = {"get_weather": WEATHER_PARAMS, "get_time": TIME_PARAMS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture
def sdk(chatq: Chatq) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                       max_retries=0) as client:
        yield client


def _valid_call(name: str, arguments: str) -> dict[str, Any]:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_required_gives_a_valid_call(sdk: openai.OpenAI, client: httpx.Client) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=64,
        temperature=0)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in SCHEMAS
    _valid_call(call.function.name, call.function.arguments)
    job = client.get(f"/v1/jobs/{completion.id}").json()
    assert job["finish_reason"] == "tool_calls"
    assert job["tool_calls"] == [call.model_dump()]


def test_named_function_is_the_one_called(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = completion.choices[0].message.tool_calls
    assert completion.choices[0].finish_reason == "tool_calls"
    assert calls and calls[0].function.name == "get_time"
    assert set(_valid_call("get_time", calls[0].function.arguments)) == {"timezone"}


def test_a_forced_call_takes_its_own_parameters_as_response_format(
    sdk: openai.OpenAI
) -> None:
    """A format that is the called function's own parameters asks nothing more of the
    answer (instructor's Responses mode sends both); any other is refused."""
    own = {"type": "json_schema", "json_schema": {"name": "t", "schema": TIME_PARAMS}}
    named = {"type": "function", "function": {"name": "get_time"}}
    completion = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0,
        tool_choice=named, response_format=own)  # type: ignore[arg-type]
    calls = completion.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_time"
    _valid_call("get_time", calls[0].function.arguments)
    other = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_PARAMS}}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64,
                                    tool_choice=named, response_format=other)  # type: ignore[arg-type]
    assert refused.value.param == "response_format"  # type: ignore[attr-defined]


def test_streamed_call_assembles_to_the_same(sdk: openai.OpenAI) -> None:
    args: dict[str, Any] = {"model": MODEL, "messages": ASK, "tools": TOOLS, "max_tokens": 64,
                            "temperature": 0, "seed": 1,
                            "tool_choice": {"type": "function",
                                            "function": {"name": "get_weather"}}}
    whole = sdk.chat.completions.create(**args).choices[0].message.tool_calls
    chunks = list(sdk.chat.completions.create(**args, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas and all(d.index == 0 for d in deltas)
    name = "".join(d.function.name or "" for d in deltas if d.function)
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole and name == whole[0].function.name == "get_weather"
    assert json.loads(arguments) == json.loads(whole[0].function.arguments)
    _valid_call(name, arguments)


def test_round_trip_ends_in_content(sdk: openai.OpenAI) -> None:
    first = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
    ]
    final = sdk.chat.completions.create(model=MODEL, messages=history, tools=TOOLS,
                                        tool_choice="none", max_tokens=24)
    choice = final.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert choice.message.content and not choice.message.tool_calls


def test_none_answers_content(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=16)
    choice = completion.choices[0]
    assert choice.message.content and choice.message.tool_calls is None
    assert choice.finish_reason in ("stop", "length")


def test_auto_answers_a_call_or_content(sdk: openai.OpenAI) -> None:
    completion = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=48, temperature=0)
    choice = completion.choices[0]
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        call = choice.message.tool_calls[0]
        assert call.function.name in SCHEMAS and json.loads(call.function.arguments) is not None
    else:
        assert choice.message.content and choice.finish_reason in ("stop", "length")


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"messages": [*ASK, {"role": "tool", "content": "21"}]}, "messages[1].tool_call_id"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"n": {"type": "number", "minimum": 1.5}}}}}],
      "tool_choice": "required"},
     "tools[0].function.parameters.properties.n.minimum"),
])
def test_bad_tools_are_400_naming_the_param(sdk: openai.OpenAI, body: dict[str, Any],
                                            param: str) -> None:
    request: dict[str, Any] = {"model": MODEL, "messages": ASK, "max_tokens": 8, **body}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.chat.completions.create(**request)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == param, error


def test_jobs_body_takes_tools(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS, "tool_choice": "required",
            "max_tokens": 64, "temperature": 0}
    job = client.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"}).json()
    assert job["status"] == "succeeded" and job["finish_reason"] == "tool_calls"
    call = job["tool_calls"][0]
    _valid_call(call["function"]["name"], call["function"]["arguments"])
    stored = client.get(f"/v1/conversations/{job['conversation_id']}").json()["messages"]
    assert stored[-1]["role"] == "assistant" and stored[-1]["tool_calls"] == job["tool_calls"]
    # The next turn continues the conversation with the tool's result.
    follow = {"model": MODEL, "conversation_id": job["conversation_id"], "max_tokens": 16,
              "messages": [{"role": "tool", "tool_call_id": call["id"], "content": "21 C"}]}
    answer = client.post("/v1/jobs", json=follow, headers={"Prefer": "wait=60"}).json()
    assert answer["status"] == "succeeded" and answer["output"]
    assert answer["tool_calls"] is None and answer["history_messages"] == 2


def test_langchain_bind_tools_forced(chatq: Chatq) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The current weather in a city, in celsius or fahrenheit."""
        return f"21 {unit} in {city}"

    llm = ChatOpenAI(model=MODEL, base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                     max_tokens=64, temperature=0, max_retries=0)
    reply = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?")
    assert len(reply.tool_calls) == 1  # type: ignore[attr-defined]
    call = reply.tool_calls[0]  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert isinstance(call["args"], dict) and set(call["args"]) == {"city", "unit"}
    assert all(isinstance(v, str) for v in call["args"].values())


def test_auto_stream_agrees_with_the_job(sdk: openai.OpenAI, client: httpx.Client) -> None:
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello to Ada."}], tools=TOOLS,
        max_tokens=24, temperature=0, stream=True))
    job = client.get(f"/v1/jobs/{chunks[0].id}").json()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    finish = chunks[-1].choices[0].finish_reason
    if job["tool_calls"]:
        assert finish == "tool_calls" and not text
        assert [c.function.name for c in calls] == [
            c["function"]["name"] for c in job["tool_calls"]]
    else:
        assert text == job["output"] and not calls and finish in ("stop", "length")


def test_a_forced_call_has_no_content_logprobs(sdk: openai.OpenAI) -> None:
    choice = sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=64,
        temperature=0, logprobs=True).choices[0]
    assert choice.message.tool_calls and choice.message.content is None
    assert choice.logprobs is not None and choice.logprobs.content == []


def test_auto_stream_with_response_format_keeps_the_held_texts_logprobs(
    sdk: openai.OpenAI
) -> None:
    """The answer starts with `{` (the schema's object), so it is held back as a
    possible call; it is no call, so it goes out as content with its logprobs."""
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24}},
              "required": ["city"], "additionalProperties": False}
    chunks = list(sdk.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, max_tokens=64, temperature=0, stream=True,
        logprobs=True, response_format={"type": "json_schema",
                                         "json_schema": {"name": "c", "schema": schema}}))
    choices = [c.choices[0] for c in chunks if c.choices]
    text = "".join(c.delta.content or "" for c in choices)
    tokens = [t.token for c in choices if c.logprobs for t in c.logprobs.content or []]
    assert text and "".join(tokens) == text
    assert not any(c.delta.tool_calls for c in choices)
    if choices[-1].finish_reason == "stop":
        jsonschema.validate(json.loads(text), schema)


def test_langchain_round_trip(chatq: Chatq) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_time(timezone: str) -> str:
        """The current time in a timezone."""
        return "12:00"

    llm = ChatOpenAI(model=MODEL, base_url=f"{chatq.base_url}/v1", api_key=DEV_API_KEY,
                     max_tokens=48, temperature=0, max_retries=0)
    question = HumanMessage("What time is it in Tokyo?")
    call_msg = llm.bind_tools([get_time], tool_choice="required").invoke([question])
    call = call_msg.tool_calls[0]  # type: ignore[attr-defined]
    assert call["name"] == "get_time" and isinstance(call["args"].get("timezone"), str)
    result = ToolMessage(get_time.invoke(call["args"]), tool_call_id=call["id"])
    final = llm.bind_tools([get_time], tool_choice="none").invoke(
        [question, call_msg, result])
    assert isinstance(final.content, str) and final.content
    assert not final.tool_calls  # type: ignore[attr-defined]


def test_jobs_body_refuses_bad_tools_with_400(client: httpx.Client) -> None:
    body = {"model": MODEL, "messages": ASK, "tools": TOOLS,
            "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    answer = client.post("/v1/jobs", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][0]["field"] == "tool_choice.function.name"
    missing_id = {"model": MODEL, "messages": [*ASK, {"role": "tool", "content": "21"}]}
    answer = client.post("/v1/jobs", json=missing_id)
    assert answer.status_code == 400
    assert answer.json()["error"]["details"][0]["field"] == "messages[1].tool_call_id"
