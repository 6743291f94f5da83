"""The async-caller fields of a job request: ``cancel_after``, ``webhook``,
``webhook_events``, ``priority`` — parsed and refused at the edge, naming the field."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from shared import lifecycle
from shared.lifecycle import JobRecord
from shared.schemas import (
    JobRequest,
    JobStatus,
    Priority,
    SamplingParams,
    WebhookEvent,
    cancel_at,
    parse_cancel_after,
    webhook_event,
)

MESSAGES = [{"role": "user", "content": "hi"}]


def req(**fields: Any) -> JobRequest:
    return JobRequest.model_validate({"messages": MESSAGES, **fields})


def error_fields(**fields: Any) -> list[str]:
    with pytest.raises(ValidationError) as refused:
        req(**fields)
    return [".".join(str(p) for p in e["loc"]) for e in refused.value.errors()]


@pytest.mark.parametrize(("given", "seconds"), [
    (30, 30.0), (0.5, 0.5), ("45", 45.0), (" 2.5 ", 2.5),
])
def test_cancel_after_in_seconds(given: object, seconds: float) -> None:
    assert parse_cancel_after(given) == seconds
    assert cancel_at(parse_cancel_after(given), 1000.0) == 1000.0 + seconds


@pytest.mark.parametrize(("given", "when"), [
    ("2030-01-01T12:00:00Z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
    ("2030-01-01T14:00:00+02:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
    ("2030-01-01 12:00:00.250+00:00", datetime(2030, 1, 1, 12, 0, 0, 250000, tzinfo=UTC)),
])
def test_cancel_after_as_an_iso_8601_time(given: str, when: datetime) -> None:
    parsed = parse_cancel_after(given)
    assert parsed == when
    assert cancel_at(parsed, 0.0) == when.timestamp()


@pytest.mark.parametrize("given", [0, -5, "-1", math.nan, math.inf, "nan", True, "soon",
                                   "2030-01-01T12:00:00", "2030-13-01T00:00:00Z", [], {}])
def test_bad_cancel_after_is_refused_naming_the_field(given: object) -> None:
    with pytest.raises(ValueError, match="cancel_after"):
        parse_cancel_after(given)
    assert error_fields(cancel_after=given) == ["cancel_after"]


def test_a_datetime_without_an_offset_is_ambiguous() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        parse_cancel_after("2030-01-01T12:00:00")
    aware = datetime(2030, 1, 1, tzinfo=timezone(timedelta(hours=-5)))
    assert req(cancel_after=aware).cancel_after == aware


def test_webhook_fields() -> None:
    plain = req(webhook="https://example.com/hook?x=1")
    assert plain.hook_events() == [WebhookEvent.completed]  # the default
    both = req(webhook="https://example.com/hook", webhook_events=["completed", "start"])
    assert both.hook_events() == [WebhookEvent.start, WebhookEvent.completed]
    assert req().hook_events() is None
    for url in ("ftp://example.com/", "https://", "https://u:p@example.com/",
                "https://example.com/#frag", "https://example.com:99999/", "example.com"):
        assert error_fields(webhook=url) == ["webhook"], url
    assert error_fields(webhook="https://example.com/", webhook_events=["finished"]) == [
        "webhook_events.0"]
    assert error_fields(webhook="https://example.com/", webhook_events=[]) == ["webhook_events"]
    with pytest.raises(ValidationError, match="webhook_events needs a webhook"):
        req(webhook_events=["start"])


def test_priority() -> None:
    assert req().priority is Priority.interactive
    assert req(priority="batch").priority is Priority.batch
    assert error_fields(priority="urgent") == ["priority"]


def test_which_statuses_raise_which_webhook_event() -> None:
    assert webhook_event("running") is WebhookEvent.start
    for status in ("succeeded", "failed", "cancelled", "expired"):
        assert webhook_event(status) is WebhookEvent.completed
    assert webhook_event("queued") is None and webhook_event("discarded") is None


def test_the_new_record_fields_survive_a_round_trip() -> None:
    rec = JobRecord(id="job_x", status=JobStatus.queued, model="m", queue="q", tenant="t",
                    params=SamplingParams(max_tokens=1, temperature=0, top_p=1),
                    messages=MESSAGES, created_at=10.0, priority=Priority.batch,
                    cancel_at=40.0, webhook="https://example.com/h",
                    webhook_events=["start", "completed"], conversation_id="conv_x",
                    fresh_conversation=True)
    encoded = lifecycle._encode(rec.create_fields())  # what the create script stores
    back = JobRecord.decode(dict(zip(encoded[::2], encoded[1::2], strict=True)))
    assert (back.priority, back.cancel_at, back.webhook, back.webhook_events) == (
        Priority.batch, 40.0, "https://example.com/h", ["start", "completed"])
    assert back.conversation_id == "conv_x" and back.fresh_conversation is True
    assert back.messages == MESSAGES and back.params == rec.params
    assert back.rank == rec.rank == 10.0 + 1e10
