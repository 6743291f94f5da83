"""The typed stream's pure parts (api/response_events.py): numbering that resumes, text
held while it may be a function call, and the closing events."""

from __future__ import annotations

import json
import time
from typing import Any

from api import response_events as rev
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus, SamplingParams
from shared.tools import toolset_of

FN = {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}


def record(status: JobStatus = JobStatus.running, tools: Any = None,
           **fields: Any) -> JobRecord:
    toolset = toolset_of([FN], tools) if tools else None
    return JobRecord(id="job_x", status=status, model="m", queue="cpu", tenant="t",
                     params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
                     messages=[], created_at=time.time(), response={"store": True},
                     tools=toolset.to_json() if toolset else None, **fields)


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line.split("data: ", 1)[1]) for line in lines]


def test_events_are_numbered_and_skipped_up_to_after() -> None:
    ev = rev._Events(after=1)
    assert ev("a") == [] and ev("b") == []
    [line] = ev("c", x=1)
    assert line.startswith("event: c\n")
    assert parsed([line]) == [{"type": "c", "sequence_number": 2, "x": 1}]


def test_plain_text_streams_as_it_comes() -> None:
    ev, text = rev._Events(-1), rev._Text(record())
    events = parsed(text.add(ev, "Hel") + text.add(ev, "lo"))
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta"]
    done = parsed(text.close(ev, record(JobStatus.succeeded, finish_reason="stop"), "Hello"))
    assert [e["type"] for e in done] == ["response.output_text.done",
                                         "response.content_part.done",
                                         "response.output_item.done"]
    assert done[0]["text"] == "Hello" and done[2]["item"]["status"] == "completed"
    assert [e["sequence_number"] for e in events + done] == list(range(7))


def test_text_that_may_be_a_call_is_held_then_released() -> None:
    ev, text = rev._Events(-1), rev._Text(record(tools="auto"))
    assert text.add(ev, " ") == [] and text.add(ev, "{") == []  # may be a call
    ev2, text2 = rev._Events(-1), rev._Text(record(tools="auto"))
    assert text2.add(ev2, " ") == []
    released = parsed(text2.add(ev2, "It is sunny"))
    assert released[-1]["delta"] == " It is sunny"  # what was held goes out with it


def test_a_call_ends_the_stream_as_function_call_events() -> None:
    final = record(JobStatus.succeeded, tools="required", finish_reason="stop",
                   usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    ev = rev._Events(-1)
    out = parsed(rev._ending(ev, rev._Text(final), final, '{"name": "w", "arguments": {}}'))
    assert [e["type"] for e in out] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert out[-1]["response"]["output"][0]["name"] == "w"


def test_a_cancelled_response_ends_with_failed_and_its_status() -> None:
    final = record(JobStatus.cancelled)
    [end] = parsed(rev._ending(rev._Events(-1), rev._Text(final), final, ""))
    assert end["type"] == "response.failed" and end["response"]["status"] == "cancelled"
