"""The OpenAI wire format's shared pieces: the envelope every answer and chunk shares,
usage and finish reasons, and a stream that cancels its job when the client leaves
(a fake job store behind the seam)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from api import openai_wire as wire
from shared.errors import JobFailed
from shared.lifecycle import JobRecord
from shared.schemas import JobStatus, SamplingParams


def record(status: JobStatus = JobStatus.succeeded, **fields: Any) -> JobRecord:
    return JobRecord(id="job_1", status=status, model="m", queue="cpu",
                     tenant="t", params=SamplingParams(max_tokens=4, temperature=0, top_p=1),
                     messages=[], created_at=0.0, **fields)


def test_envelope_usage_and_finish_reasons() -> None:
    job = record(finish_reason="cancelled")
    assert wire.envelope(job, 7, "text_completion", []) == {
        "id": "job_1", "object": "text_completion", "created": 7, "model": "m",
        "system_fingerprint": None, "choices": []}
    assert wire.usage(job) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0,
                              "prompt_tokens_details": {"cached_tokens": 0}}
    assert wire.finish_reason(job) == "stop"
    assert wire.finish_reason(record(finish_reason="length")) == "length"
    assert wire.usage_chunk(record(usage={"prompt_tokens": 1}), 7, "x").startswith(
        'data: {"id":"job_1","object":"x"')


@pytest.mark.parametrize(("read", "cancelled"), [(1, True), (3, False)])
def test_a_stream_left_before_its_end_cancels_its_job(
    monkeypatch: pytest.MonkeyPatch, read: int, cancelled: bool,
) -> None:
    calls: list[str] = []

    async def cancel(svc: Any, job: JobRecord) -> None:
        calls.append(job.id)

    monkeypatch.setattr(wire.jobs, "cancel", cancel)

    async def lines() -> AsyncIterator[str]:
        for line in ("a", "b", "c"):
            yield line

    async def main() -> None:
        stream = wire._cancel_if_left(None, record(), lines())  # type: ignore[arg-type]
        got = [await anext(stream) for _ in range(read)]
        if read == 3:
            with pytest.raises(StopAsyncIteration):
                await anext(stream)
        await stream.aclose()  # the client went away (or the stream ended)
        assert got == ["a", "b", "c"][:read]

    anyio.run(main)
    assert calls == (["job_1"] if cancelled else [])


def test_a_blocking_call_whose_wait_passes_fails_and_cancels_its_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job still queued when the wait ends was once answered 200, empty, "stop"."""
    cancelled: list[str] = []

    async def waited(*_: Any) -> tuple[JobRecord, str]:
        return record(status=JobStatus.queued), ""

    async def cancel(svc: Any, job: JobRecord) -> None:
        cancelled.append(job.id)

    async def answer(job: JobRecord, output: str) -> dict[str, Any]:
        raise AssertionError("a job that has not finished is not answered")

    monkeypatch.setattr(wire, "wait_unless_disconnected", waited)
    monkeypatch.setattr(wire, "wait_limit_s", lambda svc: 390.0)
    monkeypatch.setattr(wire.jobs, "cancel", cancel)

    async def main() -> None:
        with pytest.raises(JobFailed) as failed:
            await wire.respond(None, None, record(), "t", answer)  # type: ignore[arg-type]
        assert (failed.value.code, failed.value.status) == ("timeout", 504)
        assert "390 s" in str(failed.value)

    anyio.run(main)
    assert cancelled == ["job_1"]
