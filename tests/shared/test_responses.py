"""The Responses API objects made from a job (shared/responses.py): ids, statuses,
output items, usage, input items, paging and the webhook event."""

from __future__ import annotations

import json
import time
from typing import Any

from shared import responses
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus, SamplingParams
from shared.tools import toolset_of

JOB = "job_abc123"
FN = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}


def record(status: JobStatus = JobStatus.succeeded, **fields: Any) -> JobRecord:
    fields.setdefault("finish_reason", "stop" if status is JobStatus.succeeded else None)
    fields.setdefault("response", {"store": True, "background": False})
    return JobRecord(id=JOB, status=status, model="m", queue="cpu", tenant="t",
                     params=SamplingParams(max_tokens=8, temperature=0.5, top_p=0.9),
                     messages=[], created_at=time.time(), **fields)


def tools(choice: Any = "auto") -> dict[str, Any]:
    toolset = toolset_of([FN], choice)
    assert toolset is not None
    return toolset.to_json()


def test_ids_map_both_ways() -> None:
    assert responses.response_id(JOB) == "resp_abc123"
    assert responses.job_id("resp_abc123") == JOB
    assert responses.job_id("job_abc123") is None and responses.job_id("resp_") is None


def test_status_names() -> None:
    assert responses.status(record(JobStatus.queued)) == "queued"
    assert responses.status(record(JobStatus.running)) == "in_progress"
    assert responses.status(record()) == "completed"
    assert responses.status(record(finish_reason="length")) == "incomplete"
    assert responses.status(record(JobStatus.cancelled)) == "cancelled"
    assert responses.status(record(JobStatus.failed)) == "failed"


def test_a_completed_response_object() -> None:
    rec = record(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                 finished_at=time.time(),
                 response={"store": True, "metadata": {"k": "v"}, "instructions": "Be brief."})
    obj = responses.response_object(rec, "Hello.")
    assert obj["id"] == "resp_abc123" and obj["object"] == "response"
    assert obj["status"] == "completed" and obj["error"] is None
    assert obj["output"] == [{"id": "msg_abc123", "type": "message", "status": "completed",
                              "role": "assistant", "content": [{
                                  "type": "output_text", "text": "Hello.", "annotations": [],
                                  "logprobs": []}]}]
    assert obj["usage"] == {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0},
                            "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 8}
    assert obj["temperature"] == 0.5 and obj["top_p"] == 0.9  # what sampling used
    assert obj["metadata"] == {"k": "v"} and obj["instructions"] == "Be brief."


def test_cached_tokens_come_from_the_job_usage() -> None:
    rec = record(usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                        "prompt_tokens_details": {"cached_tokens": 4}})  # type: ignore[dict-item]
    assert responses.usage(rec) == {
        "input_tokens": 5, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 8}


def test_incomplete_and_failed() -> None:
    obj = responses.response_object(record(finish_reason="length"), "cut")
    assert obj["incomplete_details"] == {"reason": "max_output_tokens"}
    assert obj["output"][0]["status"] == "incomplete"
    failed = record(JobStatus.failed, error={"code": "timeout", "message": "too slow"})
    obj = responses.response_object(failed, "")
    assert obj["error"] == {"code": "server_error", "message": "timeout: too slow"}
    assert obj["output"] == []


def test_a_call_is_a_function_call_item() -> None:
    answer = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    [item] = responses.output_items(record(tools=tools("required")), answer)
    assert item["type"] == "function_call" and item["name"] == "get_weather"
    assert json.loads(item["arguments"]) == {"city": "Paris"}
    assert item["id"] == "fc_abc123_0" and item["call_id"].startswith("call_")


def test_text_that_may_be_a_call_is_not_shown_while_running() -> None:
    running = record(JobStatus.running, tools=tools())
    assert responses.output_items(running, '{"name": "get_w') == []
    assert responses.output_items(running, "It is sunny")[0]["status"] == "in_progress"
    assert responses.output_items(record(JobStatus.running, tools=tools("required")),
                                  "It is") == []
    assert responses.output_items(record(JobStatus.queued), "") == []


def test_input_items_of_a_turn() -> None:
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{}"}}
    items = responses.input_items(JOB, [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ])
    assert [(i["type"], i.get("role")) for i in items] == [
        ("message", "user"), ("function_call", None), ("function_call_output", None),
        ("message", "assistant")]
    assert items[0]["content"] == [{"type": "input_text", "text": "Weather?"}]
    assert items[1]["call_id"] == items[2]["call_id"] == "call_1"
    assert items[3]["content"][0]["type"] == "output_text"
    assert len({i["id"] for i in items}) == 4


def test_page_in_either_order() -> None:
    items = [{"id": f"i{n}"} for n in range(5)]
    first = responses.page(items, "desc", 2, None)
    assert [i["id"] for i in first["data"]] == ["i4", "i3"] and first["has_more"]
    nxt = responses.page(items, "desc", 2, first["last_id"])
    assert [i["id"] for i in nxt["data"]] == ["i2", "i1"]
    last = responses.page(items, "asc", 10, "i2")
    assert [i["id"] for i in last["data"]] == ["i3", "i4"] and not last["has_more"]
    assert responses.page([], "asc", 5, None) == {"object": "list", "data": [],
                                                   "first_id": None, "last_id": None,
                                                   "has_more": False}


def test_the_webhook_event_names_the_response() -> None:
    assert responses.webhook_event(record(JobStatus.running)) is None
    body = json.loads(responses.webhook_body(record(JobStatus.cancelled)))
    assert body["type"] == "response.cancelled" and body["object"] == "event"
    assert body["data"] == {"id": "resp_abc123"}
    assert responses.webhook_event(record(finish_reason="length")) == "response.incomplete"
