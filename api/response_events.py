"""A response's typed stream events (``stream: true``), made from its job's events.

    event: response.created              event: response.output_text.delta
    data: {"type": ..., "sequence_number": 0, "response": {...}}   ...

What must hold:

- The same job gives the same events with the same ``sequence_number`` whoever
  reads it and whenever: the events are made from the job's replay log, one
  token event at a time (never the runs that happened to arrive together), so a
  stream resumed with ``starting_after=N`` (``GET /v1/responses/{id}?stream=true``)
  sends exactly the events after ``N`` of the stream it left, once each.
- The order is OpenAI's: ``response.created``, ``response.in_progress`` (once the job
  runs), the message item (``output_item.added``, ``content_part.added``,
  ``output_text.delta``..., ``output_text.done``, ``content_part.done``,
  ``output_item.done``) or each function call (``output_item.added``,
  ``function_call_arguments.delta`` / ``.done``, ``output_item.done``), then
  ``response.completed``, ``.incomplete`` or ``.failed`` (a cancelled response ends
  with ``response.failed`` and status ``cancelled``: the stream has no cancelled
  event).
- Text that may still be a function call is held back (:func:`shared.responses.
  visible_text`) and sent once it cannot be one, or as the call at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

from api import jobs
from api.services import Services
from api.sse import KEEPALIVE, frame
from shared import responses
from shared.events import KeepaliveEvent, StatusEvent, TokenEvent
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus
from shared.views import tool_calls

ENDINGS = {"completed": "response.completed", "incomplete": "response.incomplete",
           "failed": "response.failed", "cancelled": "response.failed"}


class _Events:
    """Numbers the events and keeps those after ``after`` (the rest were sent before)."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.seq = -1

    def __call__(self, kind: str, **fields: Any) -> list[str]:
        self.seq += 1
        if self.seq <= self.after:
            return []
        return [frame(kind, {"type": kind, "sequence_number": self.seq, **fields})]


class _Text:
    """The message item as it streams: opened at its first visible text."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.item_id = responses.message_item_id(record)
        self.opened = False
        self.held = ""  # text that may still be a call
        self.sent = ""

    def add(self, ev: _Events, text: str) -> list[str]:
        self.held += text
        if not self.opened and not responses.visible_text(self.record, self.sent + self.held):
            return []
        return self.flush(ev)

    def flush(self, ev: _Events) -> list[str]:
        lines = self.open(ev)
        if self.held:
            lines += ev("response.output_text.delta", item_id=self.item_id, output_index=0,
                        content_index=0, delta=self.held, logprobs=[])
            self.sent, self.held = self.sent + self.held, ""
        return lines

    def open(self, ev: _Events) -> list[str]:
        if self.opened:
            return []
        self.opened = True
        item = {**responses.message_item(self.record, "", "in_progress"), "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [*ev("response.output_item.added", output_index=0, item=item),
                *ev("response.content_part.added", item_id=self.item_id, output_index=0,
                    content_index=0, part=part)]

    def close(self, ev: _Events, final: JobRecord, output: str) -> list[str]:
        lines = self.flush(ev)
        item = responses.message_item(final, output, responses.item_status(final))
        part = item["content"][0]
        return [*lines,
                *ev("response.output_text.done", item_id=self.item_id, output_index=0,
                    content_index=0, text=output, logprobs=[]),
                *ev("response.content_part.done", item_id=self.item_id, output_index=0,
                    content_index=0, part=part),
                *ev("response.output_item.done", output_index=0, item=item)]


def _snapshot(record: JobRecord, state: JobStatus) -> dict[str, Any]:
    """The response as it was when it was created / started (the same on every replay)."""
    early = replace(record, status=state, usage=None, finish_reason=None, error=None)
    return responses.response_object(early, "")


def _calls(ev: _Events, final: JobRecord, calls: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for i, call in enumerate(calls):
        item = responses.call_item(final, i, call)
        lines += ev("response.output_item.added", output_index=i,
                    item={**item, "arguments": "", "status": "in_progress"})
        lines += ev("response.function_call_arguments.delta", item_id=item["id"],
                    output_index=i, delta=item["arguments"])
        lines += ev("response.function_call_arguments.done", item_id=item["id"],
                    output_index=i, arguments=item["arguments"])
        lines += ev("response.output_item.done", output_index=i, item=item)
    return lines


async def stream(svc: Services, record: JobRecord, tenant: str,
                 after: int = -1) -> AsyncIterator[str]:
    """The response's events after sequence number ``after`` (-1: all), until it ends."""
    ev = _Events(after)
    first = JobStatus.queued if (record.response or {}).get("background") else JobStatus.running
    for line in ev("response.created", response=_snapshot(record, first)):
        yield line
    text = _Text(record)
    started = False
    async for event in jobs.iterate_events(svc, record):
        lines: list[str] = []
        if isinstance(event, KeepaliveEvent):
            lines = [KEEPALIVE]
        elif not started and (isinstance(event, TokenEvent) or (
                isinstance(event, StatusEvent) and event.status is JobStatus.running)):
            started = True
            lines = ev("response.in_progress", response=_snapshot(record, JobStatus.running))
        if isinstance(event, TokenEvent):
            lines += text.add(ev, event.text)
        for line in lines:
            yield line
    final, output = await jobs.final(svc, record.id, tenant)
    for line in _ending(ev, text, final, output):
        yield line


def _ending(ev: _Events, text: _Text, final: JobRecord, output: str) -> list[str]:
    calls = tool_calls(final, output)
    if calls:
        lines = _calls(ev, final, calls)
    elif text.opened or output or final.status is JobStatus.succeeded:
        lines = text.close(ev, final, output)
    else:
        lines = []
    state = responses.status(final)
    return [*lines, *ev(ENDINGS[state], response=responses.response_object(final, output))]
