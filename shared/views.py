"""A job as its caller sees it (``GET /v1/jobs/{id}``), built in one place.

The API answers with it and the webhook worker posts it, so a webhook's body is
the very object a poll returns (less ``webhook_deliveries``, which a delivery
cannot contain: it changes with every attempt, and ``logprobs``, which the API
reads from the job's replay log).
"""

from __future__ import annotations

from typing import Any

from shared.lifecycle import JobRecord
from shared.schemas import Job, JobStatus, ToolCall, WebhookDelivery, WebhookEvent, utc
from shared.tools import ToolSet, parse_calls


def tool_calls(record: JobRecord, output: str) -> list[dict[str, Any]]:
    """The calls a succeeded job's answer makes (empty: none, or not finished)."""
    if record.status is not JobStatus.succeeded or not record.tools:
        return []
    return parse_calls(output, ToolSet.from_json(record.tools), record.id)


def job_view(record: JobRecord, output: str, position: int | None = None,
             deliveries: list[WebhookDelivery] | None = None,
             logprobs: list[dict[str, Any]] | None = None) -> Job:
    calls = tool_calls(record, output)
    return Job(
        id=record.id, kind=record.kind, status=record.status, model=record.model,
        queue=record.queue,
        position=position if record.status is JobStatus.queued else None, output=output,
        logprobs=logprobs, tool_calls=[ToolCall.model_validate(c) for c in calls] or None,
        finish_reason="tool_calls" if calls else record.finish_reason, usage=record.usage,
        timings=record.timings or {},
        error=record.error, attempts=record.attempts, conversation_id=record.conversation_id,
        persisted=record.persisted, history_messages=record.history_messages,
        history_trimmed=record.history_trimmed, metadata=record.metadata,
        priority=record.priority, cancel_at=utc(record.cancel_at), webhook=record.webhook,
        webhook_events=[WebhookEvent(e) for e in record.webhook_events or []] or None,
        webhook_deliveries=deliveries if record.webhook else None,
        created_at=record.created_at, started_at=utc(record.started_at),
        finished_at=utc(record.finished_at),
    )


def webhook_body(record: JobRecord, output: str, position: int | None = None) -> str:
    """What a webhook delivery posts: the job's view as JSON."""
    view = job_view(record, output, position)
    return view.model_dump_json(exclude={"webhook_deliveries"})
