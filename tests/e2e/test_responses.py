"""The OpenAI Responses API through the official ``openai`` SDK, against a running chatq
with the tiny demo model (two tenants): foreground and background responses,
conversations by ``previous_response_id``, typed and resumable streams, function
tools, structured output, refusals, webhooks, and a worker killed mid-response."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from shared.settings import DEV_API_KEY
from tests.conftest import Chatq, new_stack, start_chatq
from tests.helpers import LONG, Receiver

MODEL = "smollm2-135m"
KEYS = "key-alpha=alpha,key-beta=beta"
WAIT_S = 300  # a bound for a stuck response, not a speed: CI machines are busy
POLL_S = 0.1  # between two reads of a state being waited for
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 24},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False,
}
TOOLS: list[Any] = [{"type": "function", "name": "get_weather",
                     "description": "The current weather in a city.", "parameters": WEATHER}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chatq]:
    s = new_stack(tmp_path_factory.mktemp("responses"), "stack")
    s.env["CHATQ_API__KEYS"] = KEYS
    s.env["CHATQ_WEBHOOKS__ALLOW_PRIVATE_TARGETS"] = "true"
    try:
        yield start_chatq(s, with_webhooks=True)
    finally:
        s.stop()


def _sdk(stack: Chatq, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=key, max_retries=0,
                         timeout=120)


@pytest.fixture
def sdk(stack: Chatq) -> Iterator[openai.OpenAI]:
    with _sdk(stack, "key-alpha") as client:
        yield client


@pytest.fixture
def http(stack: Chatq) -> Iterator[httpx.Client]:
    with stack.client(key="key-alpha", timeout=120) as c:
        yield c


def poll(sdk: openai.OpenAI, resp_id: str, until: Callable[[Any], bool],
         timeout: float = WAIT_S) -> Any:
    """The response once ``until(response)`` holds (a deadline for a stuck one)."""
    deadline = time.monotonic() + timeout
    while True:
        r = sdk.responses.retrieve(resp_id)
        if until(r):
            return r
        assert time.monotonic() < deadline, f"response stuck: {r.status} {r.output_text!r}"
        time.sleep(POLL_S)


def ended(r: Any) -> bool:
    return r.status not in ("queued", "in_progress")


def test_foreground_response_answers_with_text_and_usage(sdk: openai.OpenAI,
                                                          http: httpx.Client) -> None:
    r = sdk.responses.create(model=MODEL, input="Name three rivers.", max_output_tokens=24,
                             temperature=0, metadata={"run": "1"})
    assert r.id.startswith("resp_") and r.object == "response"
    assert r.status in ("completed", "incomplete") and r.output_text
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens >= 0
    assert r.metadata == {"run": "1"} and r.model == MODEL and not r.background
    again = sdk.responses.retrieve(r.id)
    assert again.output_text == r.output_text and again.status == r.status
    job = http.get(f"/v1/jobs/{r.id.replace('resp_', 'job_', 1)}").json()  # a chatq job
    assert job["status"] == "succeeded" and job["output"] == r.output_text


def test_max_output_tokens_makes_it_incomplete(sdk: openai.OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input=LONG, max_output_tokens=16, temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage and r.usage.output_tokens == 16


def test_background_response_is_polled_to_completed(sdk: openai.OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Name three rivers.", background=True,
                             max_output_tokens=24, temperature=0)
    assert r.status == "queued" and r.background and not r.output
    done = poll(sdk, r.id, ended)
    assert done.status in ("completed", "incomplete") and done.output_text


def test_three_turns_by_previous_response_id(sdk: openai.OpenAI, http: httpx.Client) -> None:
    turns = ["My name is Ada. Say hello.", "What is my name?", "Say it once more."]
    previous = None
    ids = []
    for text in turns:
        r = sdk.responses.create(model=MODEL, input=text, max_output_tokens=12, temperature=0,
                                 instructions="Answer briefly.",
                                 **({"previous_response_id": previous} if previous else {}))
        assert ended(r) and r.previous_response_id == previous
        ids.append(r.id)
        previous = r.id
    answers = [sdk.responses.retrieve(i).output_text for i in ids]
    items = sdk.responses.input_items.list(ids[-1], order="asc").data
    seen = [(it.role, it.content[0].text) for it in items]  # type: ignore[union-attr]
    assert seen == [("user", turns[0]), ("assistant", answers[0]),
                    ("user", turns[1]), ("assistant", answers[1]), ("user", turns[2])]
    newest_first = sdk.responses.input_items.list(ids[-1], limit=2).data
    assert [it.id for it in newest_first] == [it.id for it in reversed(items)][:2]
    paged = list(sdk.responses.input_items.list(ids[-1], limit=2))  # the SDK pages on
    assert [it.id for it in paged] == [it.id for it in reversed(items)]
    with pytest.raises(openai.BadRequestError):
        sdk.responses.input_items.list(ids[-1], after="msg_unknown")
    job = http.get(f"/v1/jobs/{ids[-1].replace('resp_', 'job_', 1)}").json()
    assert job["history_messages"] == 4  # the model read both earlier turns
    with pytest.raises(openai.BadRequestError) as err:  # a branch from an older turn
        sdk.responses.create(model=MODEL, input="Hi", previous_response_id=ids[0])
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def _listed_running(http: httpx.Client, job: str) -> bool:
    cpu = {q["queue"]: q for q in http.get("/v1/queues").json()["data"]}["cpu"]
    return any(job in w["running"] for w in cpu["workers"])


def test_cancel_a_running_background_response(sdk: openai.OpenAI, http: httpx.Client) -> None:
    r = sdk.responses.create(model=MODEL, input=LONG, background=True,
                             max_output_tokens=1500, temperature=0,
                             extra_body={"priority": "batch"})
    job = r.id.replace("resp_", "job_", 1)
    # an ordinary job: its priority, and listed as running in /v1/queues
    poll(sdk, r.id, lambda x: x.status == "in_progress" and len(x.output_text) > 10
         and _listed_running(http, job))
    assert http.get(f"/v1/jobs/{job}").json()["priority"] == "batch"
    cancelled = sdk.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert sdk.responses.retrieve(r.id).status == "cancelled"
    with pytest.raises(openai.ConflictError):
        sdk.responses.cancel(r.id)


def _events(stream: Any) -> list[Any]:
    return list(stream)


def test_stream_sends_the_typed_events_in_order(sdk: openai.OpenAI) -> None:
    events = _events(sdk.responses.create(model=MODEL, input="Name three rivers.",
                                          max_output_tokens=24, temperature=0, stream=True))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == ["response.created", "response.in_progress",
                         "response.output_item.added", "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", events[-1].type]
    assert events[-1].type in ("response.completed", "response.incomplete")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text and text == final.output_text == events[-4].text
    assert sdk.responses.retrieve(final.id).output_text == text


def test_background_stream_resumes_after_a_disconnect(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(model=MODEL, input=LONG, background=True, stream=True,
                                  max_output_tokens=60, temperature=0)
    first = []
    for event in stream:
        first.append(event)
        if sum(e.type == "response.output_text.delta" for e in first) == 5:
            break
    stream.close()  # the client goes away: a background response runs on
    resp_id = first[0].response.id
    last = first[-1].sequence_number
    rest = _events(sdk.responses.retrieve(resp_id, stream=True, starting_after=last))
    assert rest[0].sequence_number == last + 1
    whole = _events(sdk.responses.retrieve(resp_id, stream=True))
    assert [e.to_dict() for e in first + rest] == [e.to_dict() for e in whole]
    text = "".join(e.delta for e in first + rest if e.type == "response.output_text.delta")
    assert rest[-1].type in ("response.completed", "response.incomplete")
    assert text == sdk.responses.retrieve(resp_id).output_text


def test_a_foreground_stream_left_early_cancels_its_response(sdk: openai.OpenAI) -> None:
    stream = sdk.responses.create(model=MODEL, input=LONG, stream=True,
                                  max_output_tokens=1500, temperature=0)
    seen = []
    for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break
    stream.close()  # not a background response: nobody is left to read it
    done = poll(sdk, seen[0].response.id, ended)
    assert done.status == "cancelled"


def test_conversation_names_a_stored_conversation(sdk: openai.OpenAI,
                                                   http: httpx.Client) -> None:
    conv = f"conv_responses_{time.time_ns()}"
    first = sdk.responses.create(model=MODEL, input="I like tea.", conversation=conv,
                                 max_output_tokens=8, temperature=0)
    second = sdk.responses.create(model=MODEL, input="What do I like?", max_output_tokens=8,
                                  conversation={"id": conv}, temperature=0)
    assert first.conversation and second.conversation and second.conversation.id == conv
    stored = http.get(f"/v1/conversations/{conv}").json()["messages"]
    assert [m["content"] for m in stored] == ["I like tea.", first.output_text,
                                              "What do I like?", second.output_text]


def test_function_tool_round_trip(sdk: openai.OpenAI) -> None:
    ask = "What is the weather in Paris?"
    r = sdk.responses.create(model=MODEL, input=ask, tools=TOOLS, max_output_tokens=64,
                             temperature=0, tool_choice={"type": "function",
                                                         "name": "get_weather"})
    [call] = r.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    result = [{"type": "function_call_output", "call_id": call.call_id,
               "output": '{"temperature": 21}'}]
    # by previous_response_id: the stored call is the turn before the output
    after = sdk.responses.create(model=MODEL, previous_response_id=r.id, input=result,
                                 tools=TOOLS, tool_choice="none", max_output_tokens=24)
    assert after.output_text and after.output[0].type == "message"
    # or the whole exchange sent again, as input items
    again = sdk.responses.create(
        model=MODEL, tools=TOOLS, tool_choice="none", max_output_tokens=24,
        input=[{"role": "user", "content": ask}, call.to_dict(), *result], store=False)
    assert again.output_text
    with pytest.raises(openai.NotFoundError):  # store: false keeps nothing
        sdk.responses.retrieve(again.id)


def test_streamed_function_call(sdk: openai.OpenAI) -> None:
    events = _events(sdk.responses.create(
        model=MODEL, input="What is the weather in Rome?", tools=TOOLS, stream=True,
        max_output_tokens=64, temperature=0, tool_choice="required", store=False))
    types = [e.type for e in events]
    assert "response.output_text.delta" not in types
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1
    jsonschema.validate(json.loads(done[0].arguments), WEATHER)
    assert events[-1].response.output[0].arguments == done[0].arguments
    # store: false: deleted once its stream is over
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            sdk.responses.retrieve(events[-1].response.id)
        except openai.NotFoundError:
            break
        assert time.monotonic() < deadline, "a store: false response was kept"
        time.sleep(POLL_S)


def test_text_format_json_schema_is_enforced(sdk: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"river": {"type": "string", "maxLength": 20},
                                               "length_km": {"type": "integer"}},
              "required": ["river", "length_km"], "additionalProperties": False}
    r = sdk.responses.create(model=MODEL, input="The longest river, as JSON.",
                             max_output_tokens=64, temperature=0,
                             text={"format": {"type": "json_schema", "name": "river",
                                              "schema": schema, "strict": True}})
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), schema)
    assert r.text and r.text.format and r.text.format.type == "json_schema"


def test_unsupported_requests_are_400_naming_the_parameter(sdk: openai.OpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"tools": [{"type": "web_search_preview"}]}, "tools[0].type"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://example.com/a.png"}]}]},
         "input[0].content[0].type"),
        ({"background": True, "store": False}, "store"),
        ({"text": {"format": {"type": "json_schema", "name": "x",
                              "schema": {"type": "object", "patternProperties": {
                                  "^a": {"type": "string"}}}}}},
         "text.format.schema.patternProperties"),
    ]
    for extra, param in cases:
        body: dict[str, Any] = {"model": MODEL, "input": "Hi", **extra}
        with pytest.raises(openai.BadRequestError) as err:
            sdk.responses.create(**body)
        assert err.value.body["param"] == param, err.value.body  # type: ignore[index]
        assert param.split(".")[0].split("[")[0] in err.value.message


def test_another_tenants_response_is_404(stack: Chatq, sdk: openai.OpenAI) -> None:
    r = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=4)
    with _sdk(stack, "key-beta") as beta:
        with pytest.raises(openai.NotFoundError):
            beta.responses.create(model=MODEL, input="Hi again", previous_response_id=r.id)
        with pytest.raises(openai.NotFoundError):
            beta.responses.retrieve(r.id)
        with pytest.raises(openai.NotFoundError):
            beta.responses.delete(r.id)
    sdk.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(r.id)


def _signed(received: Any, secret: str) -> bool:
    h = received.headers
    payload = f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + received.body
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, payload, hashlib.sha256).digest()).decode()
    return h["webhook-signature"] == f"v1,{expected}"


def test_webhooks_name_the_ended_response(sdk: openai.OpenAI, http: httpx.Client) -> None:
    secret = http.get("/v1/webhooks/secret").json()["secret"]
    with Receiver() as receiver:
        done = sdk.responses.create(model=MODEL, input="Hi", max_output_tokens=4,
                                    extra_body={"webhook": receiver.url})
        stopped = sdk.responses.create(model=MODEL, input=LONG, background=True,
                                       max_output_tokens=1500,
                                       extra_body={"webhook": receiver.url})
        poll(sdk, stopped.id, lambda x: x.status == "in_progress")
        sdk.responses.cancel(stopped.id)
        got = {json.loads(r.body)["data"]["id"]: r for r in receiver.wait(2, timeout=WAIT_S)}
    events = {rid: json.loads(r.body) for rid, r in got.items()}
    assert events[done.id]["type"] == "response.incomplete"  # 4 tokens: cut short
    assert events[stopped.id]["type"] == "response.cancelled"
    assert all(e["object"] == "event" for e in events.values())
    assert all(_signed(r, secret) for r in got.values())


def test_a_killed_worker_finishes_the_background_response_once(
    make_stack: Callable[..., Chatq],
) -> None:
    s = make_stack()
    with _sdk(s, DEV_API_KEY) as sdk:
        r = sdk.responses.create(model=MODEL, input=LONG, background=True,
                                 max_output_tokens=120, temperature=0)
        partial = poll(sdk, r.id, lambda x: len(x.output_text) > 20).output_text
        assert s.worker is not None
        s.worker.kill()
        s.worker = s.start_worker(name="worker-cpu-2")
        done = poll(sdk, r.id, ended, timeout=180)
        assert done.status in ("completed", "incomplete")
        assert done.output_text.startswith(partial)
        whole = _events(sdk.responses.retrieve(r.id, stream=True))
        text = "".join(e.delta for e in whole if e.type == "response.output_text.delta")
        assert text == done.output_text  # every token once
    with s.client() as c:
        job = c.get(f"/v1/jobs/{r.id.replace('resp_', 'job_', 1)}").json()
    assert job["attempts"] == 2
