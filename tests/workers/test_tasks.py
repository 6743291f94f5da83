"""The worker's task flow, in-process, with the fake engine and a real Redis.

Start, generate, stream, finish — and every way a run can end: cancel, deadline,
engine error, a prompt that cannot be built, a job taken away (requeued), a
stale or duplicate message, a redelivered job that continues its text.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from shared.conversations import TurnWrite
from shared.events import StatusEvent, TokenEvent, Transition, parse_log
from shared.lifecycle import BlockingJobs, JobRecord
from shared.schemas import JobStatus
from shared.settings import Settings, load_settings
from tests.shared.test_lifecycle import CFG, created
from tests.workers.fake_engine import FakeEngine, Script
from workers.cancels import CancelListener
from workers.engine import GenRequest
from workers.tasks import run_job

WORKER = "q@test:1"
LONG = " ".join(f"w{i}" for i in range(400))


@dataclass
class Tracker:
    running: set[str] = field(default_factory=set)
    seen: list[str] = field(default_factory=list)

    def track(self, job_id: str) -> None:
        self.running.add(job_id)
        self.seen.append(job_id)

    def untrack(self, job_id: str) -> None:
        self.running.discard(job_id)


@dataclass
class Persister:
    writes: list[TurnWrite] = field(default_factory=list)

    def persist(self, write: TurnWrite) -> bool:
        self.writes.append(write)
        return True


@dataclass
class FakeWorker:
    jobs: BlockingJobs
    engine: FakeEngine
    settings: Settings
    worker_id: str = WORKER
    conversations: Any = None  # no job here names a conversation
    persister: Persister = field(default_factory=Persister)
    heartbeat: Tracker = field(default_factory=Tracker)
    cancels: CancelListener = field(init=False)

    def __post_init__(self) -> None:  # not started: a cancel reaches the job by its flag
        self.cancels = CancelListener(self.jobs.redis, CFG.keys.cancels())


@pytest.fixture
def make_worker(redis_client: redis.Redis) -> Callable[..., FakeWorker]:
    def make(script: Script | None = None, time_limit_s: int = 300,
             token_s: float = 0.002, coalesce_ms: float = 20.0) -> FakeWorker:
        settings = load_settings(celery={"soft_time_limit_s": time_limit_s,
                                         "hard_time_limit_s": time_limit_s + 1,
                                         "visibility_timeout_s": time_limit_s + 2},
                                 jobs={"coalesce_ms": coalesce_ms})
        engine = FakeEngine(script, token_s=token_s) if script else FakeEngine(token_s=token_s)
        return FakeWorker(BlockingJobs(redis_client, CFG), engine, settings)

    return make


def job(w: FakeWorker, text: str = "hello there world", **params: Any) -> JobRecord:
    rec = created(w.jobs)
    if params or text:
        rec.messages = [{"role": "user", "content": text}]
        rec.params = rec.params.model_copy(update={"max_tokens": 1000, **params})
        w.jobs.redis.hset(CFG.keys.job(rec.id), mapping={
            "messages": f'[{{"role": "user", "content": "{text}"}}]',
            "params": rec.params.model_dump_json()})
    return rec


def final(w: FakeWorker, rec: JobRecord) -> tuple[JobRecord, str]:
    loaded = w.jobs(w.jobs.ops.load(rec.id))
    assert loaded.record is not None
    return loaded.record, loaded.output


def in_thread(w: FakeWorker, rec: JobRecord, dispatch: int = 1) -> threading.Thread:
    thread = threading.Thread(target=run_job, args=(w, rec.id, dispatch))
    thread.start()
    return thread


def wait_output(w: FakeWorker, rec: JobRecord, chars: int = 1) -> None:
    deadline = time.monotonic() + 5
    while len(final(w, rec)[1]) < chars:
        assert time.monotonic() < deadline, "no output"
        time.sleep(0.005)


def test_a_job_runs_streams_and_finishes(make_worker: Callable[..., FakeWorker]) -> None:
    w = make_worker()
    rec = job(w, "hello there world")
    run_job(w, rec.id)
    done, output = final(w, rec)
    assert output == "hello there world"
    assert (done.status, done.finish_reason, done.attempts) == (JobStatus.succeeded, "stop", 1)
    assert done.usage == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6,
                          "prompt_tokens_details": {"cached_tokens": 0}}
    assert done.timings["ttft_ms"] is not None and done.timings["duration_ms"] is not None
    logged = parse_log(w.jobs.redis.lrange(CFG.keys.replay(rec.id), 0, -1))
    assert "".join(e.text for e in logged if isinstance(e, TokenEvent)) == output
    assert [e.status for e in logged if isinstance(e, StatusEvent)] == ["running", "succeeded"]
    assert w.heartbeat.seen == [rec.id] and not w.heartbeat.running
    request = w.engine.requests[0]
    assert request.prompt is None and request.messages[-1]["content"] == "hello there world"


def test_max_tokens_and_stop_strings_reach_the_engine(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker()
    short = job(w, "one two three four five", max_tokens=2)
    run_job(w, short.id)
    assert final(w, short)[1] == "one two"
    assert final(w, short)[0].finish_reason == "length"
    stopped = job(w, "one two three four", stop=[" three"])
    run_job(w, stopped.id)
    assert final(w, stopped)[1] == "one two"


def test_a_stale_or_duplicate_message_changes_nothing(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker()
    rec = job(w)
    run_job(w, rec.id, dispatch=2)  # a message of a dispatch that is not the job's
    assert final(w, rec)[0].status is JobStatus.queued
    run_job(w, rec.id)
    run_job(w, rec.id)  # the same message delivered again after it finished
    assert final(w, rec)[0].attempts == 1
    assert len(w.engine.requests) == 1
    run_job(w, "job_unknown")  # a record that expired meanwhile


def test_cancel_stops_a_running_job_and_keeps_its_text(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(token_s=0.005)  # its listener is not started: the flag does it
    rec = job(w, LONG)
    thread = in_thread(w, rec)
    wait_output(w, rec, 10)
    assert w.jobs(w.jobs.ops.cancel(rec)).verdict == "stopping"
    thread.join(5)
    done, output = final(w, rec)
    assert (done.status, done.finish_reason) == (JobStatus.cancelled, "cancelled")
    assert output and LONG.startswith(output) and len(output) < len(LONG)


def test_a_cancel_request_reaches_the_generation_without_waiting_for_a_write(
    make_worker: Callable[..., FakeWorker],
) -> None:
    # Writes coalesced for a minute: after its first token the job reads its cancel flag
    # only at the end. The cancel channel stops it at once all the same.
    w = make_worker(token_s=0.005, coalesce_ms=60_000)
    w.cancels.start()
    try:
        assert w.cancels.subscribed.wait(5)
        rec = job(w, LONG)
        thread = in_thread(w, rec)
        wait_output(w, rec, 1)
        assert w.jobs(w.jobs.ops.cancel(rec)).verdict == "stopping"
        thread.join(10)
    finally:
        w.cancels.stop()
    done, output = final(w, rec)
    # Without the message the job would read its flag only after its last token, and
    # end succeeded with all of it.
    assert (done.status, done.finish_reason) == (JobStatus.cancelled, "cancelled")
    assert LONG.startswith(output) and len(output) < len(LONG)
    assert w.cancels.stop_job(rec.id) is False  # forgotten once the job ended


def test_a_job_over_its_deadline_fails_with_timeout_and_keeps_its_text(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(time_limit_s=1, token_s=0.01)
    rec = job(w, LONG)
    run_job(w, rec.id)
    done, output = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert (done.error["code"], done.finish_reason) == ("timeout", "timeout")
    assert output and LONG.startswith(output)


def test_cancel_after_stops_a_running_job_before_the_time_limit(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(time_limit_s=300, token_s=0.01)
    rec = job(w, LONG)
    w.jobs.redis.hset(CFG.keys.job(rec.id), "cancel_at", str(time.time() + 0.5))
    started = time.monotonic()
    run_job(w, rec.id)
    assert time.monotonic() - started < 2
    done, output = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error == {"code": "timeout",
                          "message": "the job's cancel_after passed while it was running"}
    assert done.finish_reason == "timeout"
    assert output and LONG.startswith(output) and len(output) < len(LONG)


def test_an_engine_error_fails_the_job(make_worker: Callable[..., FakeWorker]) -> None:
    def broken(_: GenRequest) -> str:
        raise RuntimeError("the model fell over")

    w = make_worker(broken)
    rec = job(w)
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error == {"code": "generation_error", "message": "the model fell over"}


def test_a_prompt_that_cannot_be_built_fails_the_job(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker()
    rec = job(w)
    w.jobs.redis.hset(CFG.keys.job(rec.id), "persona", '{"type": "nobody"}')
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "prompt_error"
    assert not w.engine.requests


def test_a_job_taken_away_mid_run_is_dropped_not_finished(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(token_s=0.005)
    rec = job(w, LONG)
    thread = in_thread(w, rec)
    wait_output(w, rec, 10)
    loaded = final(w, rec)[0]
    # the sweeper decided this worker was gone: the job is queued again under dispatch 2
    assert w.jobs(w.jobs.ops.requeue(loaded, WORKER, max_attempts=3)).verdict == "requeued"
    thread.join(5)
    assert not thread.is_alive()
    done, _ = final(w, rec)
    assert (done.status, done.dispatch, done.owner) == (JobStatus.queued, 2, None)
    assert w.engine.running == 0  # its generation was stopped, the slot freed


def test_a_redelivered_job_continues_after_the_text_already_streamed(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(token_s=0.005)
    rec = job(w, LONG)
    thread = in_thread(w, rec)
    wait_output(w, rec, 30)
    w.jobs(w.jobs.ops.requeue(final(w, rec)[0], WORKER, max_attempts=3))
    thread.join(5)
    partial = final(w, rec)[1]
    run_job(w, rec.id, dispatch=2)
    done, output = final(w, rec)
    assert done.status is JobStatus.succeeded and done.attempts == 2
    assert output == LONG and output.startswith(partial)
    assert w.engine.requests[-1].continuation == partial
    logged = parse_log(w.jobs.redis.lrange(CFG.keys.replay(rec.id), 0, -1))
    seqs = [e.seq for e in logged if isinstance(e, TokenEvent)]
    assert seqs == list(range(1, len(seqs) + 1))  # no token twice, none missing
    reasons = [Transition.from_fields(f).code for _, f in w.jobs.redis.xrange(
        CFG.keys.transitions())]
    assert "worker_lost" in reasons


AGE_SCHEMA = {"type": "object", "properties": {
    "age": {"type": "integer", "maximum": 150},
    "born": {"type": "string", "format": "date"}}, "required": ["age"]}


def test_an_answer_that_does_not_match_its_schema_fails_the_job_naming_the_keyword(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(lambda _: '{"age":30,"born":"2024-02-31"}')
    rec = created(w.jobs, answer_schema=AGE_SCHEMA)
    run_job(w, rec.id)
    done, output = final(w, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "schema_mismatch" and "`format`" in done.error["message"]
    assert done.finish_reason == "error"
    assert output == '{"age":30,"born":"2024-02-31"}'  # kept, as partial output is


def test_an_answer_that_matches_its_schema_succeeds(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(lambda _: '{"age":30,"born":"2024-02-29"}')
    rec = created(w.jobs, answer_schema=AGE_SCHEMA)
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert (done.status, done.error) == (JobStatus.succeeded, None)


def test_an_answer_cut_by_max_tokens_is_left_to_say_so(
    make_worker: Callable[..., FakeWorker],
) -> None:
    w = make_worker(lambda _: " ".join(["{"] * 20))  # 20 pieces, max_tokens 8
    rec = created(w.jobs, answer_schema=AGE_SCHEMA)
    run_job(w, rec.id)
    done, _ = final(w, rec)
    assert (done.status, done.finish_reason) == (JobStatus.succeeded, "length")
