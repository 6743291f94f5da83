"""The task layer with the upstream engine (in-process, a real Redis, the scripted
upstream): a job takes the upstream's usage, streams into the replay log, and fails
with the upstream's error code, exactly as with a local engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from shared.events import TokenEvent, parse_log
from shared.lifecycle import BlockingJobs
from shared.schemas import JobStatus
from shared.settings import load_settings
from tests.shared.test_lifecycle import CFG
from tests.workers.fake_upstream import FakeUpstream, Status, Stream, chunk
from tests.workers.test_tasks import FakeWorker, final, job
from tests.workers.test_upstream_engine import ENV, spec
from workers.tasks import run_job
from workers.upstream_engine import UpstreamEngine

# What admission makes of an upstream model's sampling (see ModelSpec.sampling_params).
NEUTRAL = {"top_k": 0, "min_p": 0.0}


@pytest.fixture
def worker(redis_client: redis.Redis, upstream: FakeUpstream) -> Iterator[FakeWorker]:
    engine = UpstreamEngine(spec(upstream.url), environ=ENV)
    yield FakeWorker(BlockingJobs(redis_client, CFG), engine, load_settings())  # type: ignore[arg-type]
    engine.close()


def test_a_job_streams_and_takes_the_upstreams_usage(
        worker: FakeWorker, upstream: FakeUpstream) -> None:
    upstream.answers = [Stream([chunk("Hello"), chunk(" world", finish="stop"),
                                chunk(usage={"prompt_tokens": 9, "completion_tokens": 3,
                                             "total_tokens": 12})])]
    rec = job(worker, "say hello", **NEUTRAL)  # type: ignore[arg-type]
    run_job(worker, rec.id)  # type: ignore[arg-type]
    done, output = final(worker, rec)  # type: ignore[arg-type]
    assert (done.status, done.finish_reason, output) == (JobStatus.succeeded, "stop",
                                                         "Hello world")
    assert done.usage == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    assert done.timings["ttft_ms"] is not None
    logged = parse_log(worker.jobs.redis.lrange(CFG.keys.replay(rec.id), 0, -1))
    assert [e.text for e in logged if isinstance(e, TokenEvent)] == ["Hello", " world"]
    assert upstream.seen[0].body["messages"] == [{"role": "user", "content": "say hello"}]


def test_an_upstream_failure_fails_the_job_with_its_code(
        worker: FakeWorker, upstream: FakeUpstream) -> None:
    upstream.answers = [Status(400, {"error": {"message": "too long"}})]
    rec = job(worker, **NEUTRAL)  # type: ignore[arg-type]
    run_job(worker, rec.id)  # type: ignore[arg-type]
    done, _ = final(worker, rec)  # type: ignore[arg-type]
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "upstream_rejected"
    assert "too long" in done.error["message"]


def test_a_parameter_the_upstream_cannot_honour_fails_the_job(worker: FakeWorker) -> None:
    rec = job(worker, top_k=40)  # type: ignore[arg-type]
    run_job(worker, rec.id)  # type: ignore[arg-type]
    done, _ = final(worker, rec)  # type: ignore[arg-type]
    assert done.error is not None and done.error["code"] == "unsupported_parameter"
    assert "top_k" in done.error["message"]
