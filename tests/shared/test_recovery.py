"""The recovery sweeper: gone workers' jobs requeued and sent again, unsent jobs sent,
due jobs expired; several sweepers at once never do one fix twice."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import pytest
import redis

from shared.lifecycle import LANES, BlockingJobs, JobRecord, Priority
from shared.recovery import Sweeper
from shared.schemas import JobStatus
from shared.settings import load_settings
from tests.shared.test_lifecycle import CFG, W1, W2, created, running


@dataclass
class FakeDispatcher:
    sent: list[tuple[str, str, int, int]] = field(default_factory=list)
    refuse: bool = False

    def send(self, job_id: str, queue: str, dispatch: int, lane: int) -> None:
        if self.refuse:
            raise OSError("broker down")
        self.sent.append((job_id, queue, dispatch, lane))


@pytest.fixture
def jobs(redis_client: redis.Redis) -> BlockingJobs:
    return BlockingJobs(redis_client, CFG)


def sweeper(jobs: BlockingJobs, dispatcher: FakeDispatcher, attempts: int = 3) -> Sweeper:
    settings = load_settings(worker={"heartbeat_ttl_s": 5},
                             celery={"max_attempts": attempts},
                             jobs={"unsent_grace_s": 0.05})
    return Sweeper(jobs, dispatcher, settings)  # type: ignore[arg-type]


def beat(jobs: BlockingJobs, worker: str, age_s: float = 0, holds: list[str] | None = None
         ) -> None:
    at = time.time() - age_s
    jobs.redis.hset(CFG.keys.worker(worker), mapping={
        "worker_id": worker, "queue": "q", "running": json.dumps(holds or []), "last_beat": at})
    jobs.redis.zadd(CFG.keys.workers(), {worker: at})


def status(jobs: BlockingJobs, rec: JobRecord) -> JobRecord:
    loaded = jobs(jobs.ops.load(rec.id)).record
    assert loaded is not None
    return loaded


def test_jobs_of_a_live_worker_are_left_alone(jobs: BlockingJobs) -> None:
    rec = running(jobs, W1)
    just_started = running(jobs, W1)  # not in a beat yet
    beat(jobs, W1, holds=[rec.id])
    jobs(jobs.ops.sent(rec.id, 1))
    report = sweeper(jobs, FakeDispatcher()).sweep()
    assert report.requeued == []
    assert status(jobs, rec).status is status(jobs, just_started).status is JobStatus.running


def test_a_job_its_live_worker_stopped_holding_is_requeued(jobs: BlockingJobs) -> None:
    rec = running(jobs, W1)
    jobs.redis.hset(CFG.keys.job(rec.id), "run_at", time.time() - 30)
    beat(jobs, W1, holds=[])  # alive, but its run of the job broke off long ago
    assert sweeper(jobs, FakeDispatcher()).sweep().requeued == [rec.id]


def test_a_gone_workers_job_is_requeued_and_sent_once(jobs: BlockingJobs) -> None:
    beat(jobs, W1, age_s=60)  # its last beat is long past the TTL
    beat(jobs, W2)
    rec = running(jobs, W1)
    dispatcher = FakeDispatcher()
    first, second = sweeper(jobs, dispatcher), sweeper(jobs, dispatcher)
    assert first.sweep().requeued == [rec.id]
    assert second.sweep().requeued == []  # a second sweeper finds nothing left to do
    assert dispatcher.sent == [(rec.id, "q", 2, LANES[Priority.interactive])]
    back = status(jobs, rec)
    assert (back.status, back.dispatch) == (JobStatus.queued, 2)
    assert jobs.redis.zscore(CFG.keys.unsent(), rec.id) is None  # sent: nothing pending


def test_a_job_out_of_attempts_fails_worker_lost(jobs: BlockingJobs) -> None:
    rec = running(jobs, W1)  # W1 never beat at all
    report = sweeper(jobs, FakeDispatcher(), attempts=1).sweep()
    assert report.failed == [rec.id]
    back = status(jobs, rec)
    assert back.status is JobStatus.failed and back.error is not None
    assert back.error["code"] == "worker_lost"


def test_an_unsent_job_is_sent_after_the_grace_period(jobs: BlockingJobs) -> None:
    rec = created(jobs)  # written, but its API died before sending it
    dispatcher = FakeDispatcher()
    time.sleep(0.1)
    assert sweeper(jobs, dispatcher).sweep().sent == [rec.id]
    assert dispatcher.sent == [(rec.id, "q", 1, LANES[Priority.interactive])]
    assert sweeper(jobs, dispatcher).sweep().sent == []


def test_a_refused_send_is_tried_again_later(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    time.sleep(0.1)
    dispatcher = FakeDispatcher(refuse=True)
    assert sweeper(jobs, dispatcher).sweep().sent == []
    dispatcher.refuse = False
    time.sleep(0.1)
    assert sweeper(jobs, dispatcher).sweep().sent == [rec.id]


def test_a_due_job_expires(jobs: BlockingJobs) -> None:
    rec = created(jobs, expires_at=time.time() - 1)
    jobs(jobs.ops.sent(rec.id, 1))
    assert sweeper(jobs, FakeDispatcher()).sweep().expired == [rec.id]
    assert status(jobs, rec).status is JobStatus.expired


def run_again(jobs: BlockingJobs, rec: JobRecord, worker: str) -> None:
    """The requeued job is taken by ``worker`` (its new dispatch)."""
    back = status(jobs, rec)
    assert jobs(jobs.ops.start(rec.id, rec.queue, back.dispatch, worker,
                               f"lease-{worker}-{back.dispatch}")).verdict == "run"


def test_a_job_whose_worker_died_comes_back_suspect(jobs: BlockingJobs) -> None:
    rec = running(jobs, W1)  # W1 never beats: dead
    assert not status(jobs, rec).suspect
    assert sweeper(jobs, FakeDispatcher()).sweep().requeued == [rec.id]
    back = status(jobs, rec)
    assert back.status is JobStatus.queued and back.suspect and back.deaths == 1


def test_a_second_death_fails_the_job_worker_lost_with_the_reason(jobs: BlockingJobs) -> None:
    """A poison job: each delivery kills its worker. The second death ends it, with
    attempts left, instead of a third worker dying of it."""
    rec = running(jobs, W1)
    assert sweeper(jobs, FakeDispatcher(), attempts=5).sweep().requeued == [rec.id]
    run_again(jobs, rec, W2)  # W2 never beats either: it died of the job too
    report = sweeper(jobs, FakeDispatcher(), attempts=5).sweep()
    assert report.failed == [rec.id] and report.requeued == []
    done = status(jobs, rec)
    assert done.status is JobStatus.failed and done.error is not None
    assert done.error["code"] == "worker_lost"
    assert "the worker died twice while running this job" in done.error["message"]
    assert done.attempts == 2 and done.deaths == 2


def test_a_run_that_broke_off_under_a_live_worker_is_no_death(jobs: BlockingJobs) -> None:
    """A live worker that stopped holding the job (a long Redis outage) did not die of it:
    the job is requeued as before, not made suspect, and not failed a second time."""
    rec = running(jobs, W1)
    for again in (False, True):
        if again:
            run_again(jobs, rec, W1)
        jobs.redis.hset(CFG.keys.job(rec.id), "run_at", time.time() - 30)
        beat(jobs, W1, holds=[])
        assert sweeper(jobs, FakeDispatcher(), attempts=5).sweep().requeued == [rec.id]
    back = status(jobs, rec)
    assert back.status is JobStatus.queued and not back.suspect
