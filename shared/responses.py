"""The OpenAI Responses API's objects, made from a chatq job (pure: no I/O).

A response *is* a chat job: its id is the job's with ``resp_`` for ``job_``
(:func:`response_id`, :func:`job_id`), so ``GET /v1/jobs/{id}`` and ``/v1/queues``
see it as any other job. What the request asked that a job does not hold
(``instructions``, ``store``, ``background``, ``text``, the tools as given...) is
kept on the job record (``JobRecord.response``) and echoed by :func:`response_object`.

What must hold:

- Every reader of one job makes the same object: item ids and call ids are
  derived from the job id, so a poll, a stream, a webhook and a stream resumed
  elsewhere name the same items.
- The status is OpenAI's name for the job's: ``queued``, ``in_progress``, then
  ``completed``, ``incomplete`` (stopped by ``max_output_tokens``), ``failed`` or
  ``cancelled`` (:func:`status`).
- A function call is read from the finished answer (:func:`shared.views.tool_calls`);
  while the answer may still be a call, nothing of it is shown (:func:`visible_text`).

The API (``api/routers/responses.py``) and the webhook worker both use this
module: a webhook's body is OpenAI's event object naming the response
(:func:`webhook_payload`).
"""

from __future__ import annotations

import json
from typing import Any

from shared.lifecycle import JobRecord
from shared.schemas import JobStatus
from shared.tools import ToolSet, could_be_call
from shared.views import tool_calls
from shared.webhooks.signing import webhook_id

RESPONSE_PREFIX = "resp_"
JOB_PREFIX = "job_"

# chatq's job statuses as the Responses API names them (succeeded: see status()).
STATUSES = {JobStatus.queued: "queued", JobStatus.running: "in_progress",
            JobStatus.failed: "failed", JobStatus.cancelled: "cancelled",
            JobStatus.expired: "cancelled"}

# The webhook event a finished response raises, by its status.
WEBHOOK_EVENTS = {"completed": "response.completed", "failed": "response.failed",
                  "cancelled": "response.cancelled", "incomplete": "response.incomplete"}


def response_id(job_id: str) -> str:
    return RESPONSE_PREFIX + job_id.removeprefix(JOB_PREFIX)


def job_id(resp_id: str) -> str | None:
    """The job of a response id (None: not a response id)."""
    if not resp_id.startswith(RESPONSE_PREFIX) or len(resp_id) == len(RESPONSE_PREFIX):
        return None
    return JOB_PREFIX + resp_id.removeprefix(RESPONSE_PREFIX)


def _token(record: JobRecord) -> str:
    return record.id.removeprefix(JOB_PREFIX)


def message_item_id(record: JobRecord) -> str:
    """The id of the answer's message item."""
    return f"msg_{_token(record)}"


def call_item_id(record: JobRecord, index: int) -> str:
    return f"fc_{_token(record)}_{index}"


def status(record: JobRecord) -> str:
    if record.status is JobStatus.succeeded:
        return "incomplete" if record.finish_reason == "length" else "completed"
    return STATUSES[record.status]


def visible_text(record: JobRecord, text: str) -> bool:
    """Whether an unfinished answer's ``text`` can be shown: not while it may still turn
    out to be a function call (all of it when a call is forced)."""
    toolset = ToolSet.from_json(record.tools)
    if not toolset or toolset.choice == "none":
        return True
    return not toolset.forced and not could_be_call(text)


def message_item(record: JobRecord, text: str, item_status: str) -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": message_item_id(record), "type": "message", "status": item_status,
            "role": "assistant", "content": [part]}


def call_item(record: JobRecord, index: int, call: dict[str, Any],
              item_status: str = "completed") -> dict[str, Any]:
    """A ``function_call`` output item of an OpenAI chat ``tool_calls`` entry."""
    fn = call["function"]
    return {"id": call_item_id(record, index), "type": "function_call", "status": item_status,
            "call_id": call["id"], "name": fn["name"], "arguments": fn["arguments"]}


def item_status(record: JobRecord) -> str:
    """An output item's status: in progress while the job runs, incomplete when it was
    cut short (max_output_tokens, a cancel, a failure)."""
    if not record.status.terminal:
        return "in_progress"
    return "completed" if status(record) == "completed" else "incomplete"


def output_items(record: JobRecord, output: str) -> list[dict[str, Any]]:
    """The response's ``output``: its function calls, or its message (the text so far
    while it runs, unless that may still be a call)."""
    calls = tool_calls(record, output)
    if calls:
        return [call_item(record, i, c) for i, c in enumerate(calls)]
    if not record.status.terminal:
        if not output or not visible_text(record, output):
            return []
    elif record.status is not JobStatus.succeeded and not output:
        return []
    return [message_item(record, output, item_status(record))]


def usage(record: JobRecord) -> dict[str, Any] | None:
    if not record.usage:
        return None
    u: dict[str, Any] = dict(record.usage)
    details = u.get("prompt_tokens_details")
    cached_tokens = details.get("cached_tokens", 0) if isinstance(details, dict) else 0
    return {"input_tokens": u.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": u.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.get("total_tokens", 0)}


def error(record: JobRecord) -> dict[str, str] | None:
    """OpenAI's ``error`` of a failed response: ``server_error`` (the SDK knows a fixed
    set of codes), chatq's own code leading the message."""
    if record.status is not JobStatus.failed:
        return None
    err = record.error or {}
    code = err.get("code", "generation_error")
    return {"code": "server_error", "message": f"{code}: {err.get('message', 'failed')}"}


def response_object(record: JobRecord, output: str) -> dict[str, Any]:
    """The response as ``GET /v1/responses/{id}`` answers it."""
    echo = record.response or {}
    state = status(record)
    finished = record.finished_at if record.status.terminal else None
    return {
        "id": response_id(record.id), "object": "response",
        "created_at": int(record.created_at), "status": state,
        "background": bool(echo.get("background")),
        "completed_at": int(finished) if finished and state == "completed" else None,
        "error": error(record),
        "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": record.model,
        "output": output_items(record, output),
        "parallel_tool_calls": echo.get("parallel_tool_calls", True),
        "previous_response_id": echo.get("previous_response_id"),
        "conversation": ({"id": record.conversation_id} if echo.get("conversation") else None),
        "reasoning": None,
        "service_tier": "default",
        "store": echo.get("store", True),
        "temperature": record.params.temperature,
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice", "auto"),
        "tools": echo.get("tools", []),
        "top_logprobs": 0,
        "top_p": record.params.top_p,
        "truncation": echo.get("truncation", "disabled"),
        "usage": usage(record),
        "user": echo.get("user"),
        "safety_identifier": echo.get("safety_identifier"),
        "metadata": echo.get("metadata") or {},
    }


def webhook_event(record: JobRecord) -> str | None:
    """The webhook event type of a finished response (None: not finished)."""
    if not record.status.terminal:
        return None
    return WEBHOOK_EVENTS.get(status(record))


def webhook_payload(record: JobRecord, event_id: str) -> dict[str, Any]:
    """OpenAI's webhook event object: it names the response (fetch it for the rest)."""
    return {"id": event_id, "object": "event", "type": webhook_event(record),
            "created_at": int(record.finished_at or record.created_at),
            "data": {"id": response_id(record.id)}}


def webhook_body(record: JobRecord) -> str:
    """What a finished response's webhook posts (its id is the delivery's ``webhook-id``)."""
    return json.dumps(webhook_payload(record, webhook_id(record.id, "completed")))


# --- input items ----------------------------------------------------------------------


def _text_part(role: str, text: str) -> dict[str, Any]:
    if role == "assistant":
        return {"type": "output_text", "text": text, "annotations": []}
    return {"type": "input_text", "text": text}


def input_items(job: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A job's stored turn (chat messages, in order) as Responses input items, oldest
    first. Ids are derived from the job and the message's place in its turn (the
    place :class:`shared.conversations.TurnWrite` stores it at)."""
    token = job.removeprefix(JOB_PREFIX)
    items: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "tool":
            items.append({"id": f"fco_{token}_{i}", "type": "function_call_output",
                          "status": "completed", "call_id": m.get("tool_call_id"),
                          "output": m.get("content", "")})
            continue
        if m.get("content") or not m.get("tool_calls"):
            items.append({"id": f"msg_{token}_{i}", "type": "message", "status": "completed",
                          "role": role, "content": [_text_part(role, m.get("content", ""))]})
        for j, call in enumerate(m.get("tool_calls") or []):
            fn = call.get("function", {})
            items.append({"id": f"fc_{token}_{i}_{j}", "type": "function_call",
                          "status": "completed", "call_id": call.get("id"),
                          "name": fn.get("name"), "arguments": fn.get("arguments", "{}")})
    return items


def page(items: list[dict[str, Any]], order: str, limit: int, after: str | None,
         before: str | None = None) -> dict[str, Any]:
    """A list page as OpenAI answers one: ``order`` asc (oldest first) or desc, the
    items after the item ``after`` (and before ``before``) in that order."""
    ordered = items if order == "asc" else list(reversed(items))
    ids = [it["id"] for it in ordered]
    start = ids.index(after) + 1 if after in ids else 0
    end = ids.index(before) if before in ids else len(ordered)
    chosen = ordered[start:end][:limit]
    return {"object": "list", "data": chosen,
            "first_id": chosen[0]["id"] if chosen else None,
            "last_id": chosen[-1]["id"] if chosen else None,
            "has_more": start + len(chosen) < end}
