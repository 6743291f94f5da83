"""Every lifecycle script, run directly against a real Redis.

Each transition is atomic and checked: a second delivery, a stale message, a
late finish, a cancel racing a start, a requeue after the worker is gone.
Whatever a script announces parses with the typed events of shared.events.
"""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
import redis

from shared.events import StatusEvent, TokenEvent, Transition, parse_batch, parse_log
from shared.keys import Keys
from shared.lifecycle import (
    BlockingJobs,
    Cancelled,
    Emitted,
    JobRecord,
    Priority,
    QueueLimit,
    StoreConfig,
    new_job_id,
)
from shared.schemas import JobStatus, SamplingParams

CFG = StoreConfig(keys=Keys("t"), max_age_s=60, retention_s=30, tombstone_s=60,
                  max_queue_depth=3)
K = CFG.keys
W1, W2 = "cpu@host:1", "cpu@host:2"
L1, L2 = "lease-1", "lease-2"  # one run on each
LEASES = {W1: L1, W2: L2}


@pytest.fixture
def jobs(redis_client: redis.Redis) -> BlockingJobs:
    return BlockingJobs(redis_client, CFG)


def record(priority: Priority = Priority.interactive, tenant: str = "acme",
           **fields: object) -> JobRecord:
    return JobRecord(
        id=new_job_id(), status=JobStatus.queued, model="m", queue="q", tenant=tenant,
        params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
        messages=[{"role": "user", "content": "hi"}], created_at=time.time(),
        priority=priority, **fields,  # type: ignore[arg-type]
    )


def created(jobs: BlockingJobs, **fields: object) -> JobRecord:
    rec = record(**fields)  # type: ignore[arg-type]
    assert isinstance(jobs(jobs.ops.create(rec)), int)
    return rec


def running(jobs: BlockingJobs, worker: str = W1) -> JobRecord:
    rec = created(jobs)
    assert jobs(jobs.ops.start(rec.id, rec.queue, rec.dispatch, worker,
                               LEASES[worker])).verdict == "run"
    rec.lease = LEASES[worker]
    return rec


def load(jobs: BlockingJobs, rec: JobRecord) -> JobRecord:
    loaded = jobs(jobs.ops.load(rec.id))
    assert loaded.record is not None
    return loaded.record


def transitions(client: redis.Redis) -> list[Transition]:
    return [Transition.from_fields(f) for _, f in client.xrange(K.transitions())]


def statuses(client: redis.Redis, rec: JobRecord) -> list[StatusEvent]:
    logged = parse_log(client.lrange(K.replay(rec.id), 0, -1))
    return [e for e in logged if isinstance(e, StatusEvent)]


# --- create, sent, discard --------------------------------------------------------------


def test_create_writes_a_queued_job_that_loads_back_whole(jobs: BlockingJobs) -> None:
    rec = record(conversation_id="conv_1", metadata={"k": [1, 2]},
                 persona={"type": "office", "reference_data": None}, user_id="u1")
    assert jobs(jobs.ops.create(rec)) == 0
    back = load(jobs, rec)
    assert back == rec  # every field as written, expires_at filled in
    assert back.expires_at == pytest.approx(rec.created_at + CFG.max_age_s)
    assert 0 < jobs.redis.ttl(K.job(rec.id)) <= CFG.max_age_s + CFG.retention_s
    [t] = transitions(jobs.redis)
    assert (t.job_id, t.from_status, t.to, t.queue, t.tenant) == (rec.id, "", "queued", "q",
                                                                   "acme")
    assert jobs.redis.zscore(K.unsent(), rec.id) is not None
    assert jobs.redis.zscore(K.expiry(), rec.id) == pytest.approx(back.expires_at)


def test_create_refuses_past_the_depth_limit_and_writes_nothing(jobs: BlockingJobs) -> None:
    for place in range(3):
        assert jobs(jobs.ops.create(record())) == place
    extra = record()
    assert jobs(jobs.ops.create(extra)) is QueueLimit.queue
    assert not jobs.redis.exists(K.job(extra.id))
    assert jobs.redis.zcard(K.waiting("q")) == 3
    assert len(transitions(jobs.redis)) == 3


def test_one_tenants_backlog_leaves_room_for_the_others(redis_client: redis.Redis) -> None:
    shared = BlockingJobs(redis_client, dataclasses.replace(
        CFG, max_queue_depth=5, max_tenant_queue_depth=2, fair_share=100))
    mine = [record() for _ in range(3)]
    assert [shared(shared.ops.create(r)) for r in mine] == [0, 1, QueueLimit.tenant]
    assert not shared.redis.exists(K.job(mine[2].id))
    theirs = [record(tenant="globex") for _ in range(3)]
    assert [shared(shared.ops.create(r)) for r in theirs] == [2, 3, QueueLimit.tenant]
    assert shared(shared.ops.start(mine[0].id, "q", mine[0].dispatch, W1, L1)).verdict == "run"
    assert shared(shared.ops.create(record())) == 3  # acme's job left the line: room again
    assert shared(shared.ops.create(record(tenant="initech"))) == 4
    assert shared(shared.ops.create(record(tenant="umbrella"))) is QueueLimit.queue


def test_past_its_fair_share_a_tenants_job_waits_behind_the_others(
    redis_client: redis.Redis,
) -> None:
    """A tenant's flood goes behind: another tenant's job submitted later starts before
    the flood's second job (position and broker lane agree), priorities still first."""
    fair = BlockingJobs(redis_client, dataclasses.replace(CFG, max_queue_depth=10,
                                                          fair_share=1))
    flood = [record(priority=Priority.batch) for _ in range(3)]
    assert [fair(fair.ops.create(r)) for r in flood] == [0, 1, 2]
    assert [r.lane for r in flood] == [6, 9, 9]
    late = record(priority=Priority.batch, tenant="globex")
    assert fair(fair.ops.create(late)) == 1 and late.lane == 6  # before flood[1:]
    urgent = record(tenant="acme")
    assert fair(fair.ops.create(urgent)) == 0 and urgent.lane == 0
    second = record(tenant="acme")
    assert fair(fair.ops.create(second)) == 1 and second.lane == 3
    other = record(tenant="globex")
    assert fair(fair.ops.create(other)) == 1 and other.lane == 0
    order = [flood[0], late, *flood[1:]]
    assert [fair(fair.ops.position(r)) for r in (urgent, other, second, *order)] == list(
        range(7))
    stored = fair(fair.ops.load(flood[1].id)).record
    assert stored is not None and stored.lane == 9  # a requeue sends it in the same lane


def test_create_prunes_ids_whose_record_is_gone_before_refusing(jobs: BlockingJobs) -> None:
    first, *_ = [created(jobs) for _ in range(3)]
    jobs.redis.delete(K.job(first.id))  # expired while no sweeper ran
    late = record()
    assert jobs(jobs.ops.create(late)) == 2
    assert jobs.redis.zrank(K.waiting("q"), first.id) is None


def test_batch_jobs_line_up_after_every_interactive_one(jobs: BlockingJobs) -> None:
    batch = [created(jobs, priority=Priority.batch) for _ in range(2)]
    urgent = record()
    assert jobs(jobs.ops.create(urgent)) == 0
    assert jobs(jobs.ops.position(urgent)) == 0
    assert [jobs(jobs.ops.position(b)) for b in batch] == [1, 2]


def test_sent_clears_unsent_only_for_the_current_dispatch(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    assert jobs(jobs.ops.sent(rec.id, 2)) is False
    assert jobs(jobs.ops.sent(rec.id, 1)) is True
    assert jobs.redis.zscore(K.unsent(), rec.id) is None


def test_discard_removes_the_job_and_says_so(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    assert jobs(jobs.ops.discard(rec)) is True
    loaded = jobs(jobs.ops.load(rec.id))
    assert loaded.record is None and not loaded.gone  # never accepted: 404, not 410
    for key in (K.waiting("q"), K.unsent(), K.expiry()):
        assert jobs.redis.zscore(key, rec.id) is None
    assert [t.to for t in transitions(jobs.redis)] == ["queued", "discarded"]


def test_delete_removes_a_finished_job_only(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    assert jobs(jobs.ops.emit(rec, L1, tokens("a", "b"), 2)).verdict is Emitted.ok
    assert jobs(jobs.ops.delete(rec)) == "running"  # unfinished: left as it is
    assert jobs(jobs.ops.load(rec.id)).record is not None
    assert jobs(jobs.ops.finish(rec, JobStatus.succeeded, L1, finish_reason="stop")) == "ok"
    assert jobs(jobs.ops.delete(rec)) == "deleted"
    loaded = jobs(jobs.ops.load(rec.id))
    assert loaded.record is None and not loaded.gone and loaded.output == ""  # 404, not 410
    assert jobs(jobs.ops.read_log(rec.id)) == []
    assert transitions(jobs.redis)[-1].to == "deleted"
    assert jobs(jobs.ops.delete(rec)) == "missing"


def test_a_record_keeps_its_response_echo(jobs: BlockingJobs) -> None:
    rec = created(jobs, response={"store": True, "instructions": "Be brief."})
    loaded = jobs(jobs.ops.load(rec.id)).record
    assert loaded is not None and loaded.response == {"store": True, "instructions": "Be brief."}


# --- start -----------------------------------------------------------------------------


def test_start_hands_the_job_to_one_worker(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    started = jobs(jobs.ops.start(rec.id, "q", 1, W1, L1))
    assert (started.verdict, started.attempt) == ("run", 1)
    back = load(jobs, rec)
    assert (back.status, back.owner, back.attempts) == (JobStatus.running, W1, 1)
    assert back.started_at is not None
    assert jobs.redis.hget(K.running(), rec.id) == W1
    for key in (K.waiting("q"), K.unsent(), K.expiry()):
        assert jobs.redis.zscore(key, rec.id) is None
    assert statuses(jobs.redis, rec) == [StatusEvent(status=JobStatus.running, attempt=1)]
    assert [t.to for t in transitions(jobs.redis)] == ["queued", "running"]
    # a duplicate message of the same dispatch finds it busy, on any worker
    again = jobs(jobs.ops.start(rec.id, "q", 1, W2, L2))
    assert (again.verdict, again.detail) == ("busy", W1)
    assert jobs(jobs.ops.start(rec.id, "q", 1, W1, "another-run")).verdict == "busy"
    # the very same call again (a retry after its reply was lost) is still this run's
    repeated = jobs(jobs.ops.start(rec.id, "q", 1, W1, L1))
    assert (repeated.verdict, repeated.attempt) == ("run", 1)
    assert load(jobs, rec).attempts == 1


def test_start_refuses_missing_finished_and_stale(jobs: BlockingJobs) -> None:
    assert jobs(jobs.ops.start("job_none", "q", 1, W1, L1)).verdict == "missing"
    rec = created(jobs)
    assert jobs(jobs.ops.start(rec.id, "q", 7, W1, L1)).verdict == "stale"
    assert jobs(jobs.ops.cancel(rec)).verdict == "cancelled"
    started = jobs(jobs.ops.start(rec.id, "q", 1, W1, L1))
    assert (started.verdict, started.detail) == ("terminal", "cancelled")


def test_start_after_the_deadline_expires_the_job(jobs: BlockingJobs) -> None:
    rec = created(jobs, expires_at=time.time() - 1)
    assert jobs(jobs.ops.start(rec.id, "q", 1, W1, L1)).verdict == "expired"
    back = load(jobs, rec)
    assert back.status is JobStatus.expired and back.error is not None
    assert back.error["code"] == "expired" and back.started_at is None


def test_cancel_at_bounds_the_start_deadline(jobs: BlockingJobs) -> None:
    soon = created(jobs, cancel_at=time.time() + 0.3)
    assert load(jobs, soon).expires_at == pytest.approx(soon.cancel_at)
    assert jobs.redis.zscore(K.expiry(), soon.id) == pytest.approx(soon.cancel_at)
    late = created(jobs, cancel_at=time.time() + 10 * CFG.max_age_s)
    assert load(jobs, late).expires_at == pytest.approx(late.created_at + CFG.max_age_s)
    time.sleep(0.35)
    assert jobs(jobs.ops.due()) == [soon.id]
    assert jobs(jobs.ops.start(soon.id, "q", 1, W1, L1)).verdict == "expired"
    assert [t.to for t in transitions(jobs.redis) if t.job_id == soon.id] == [
        "queued", "expired"]


# --- emit ------------------------------------------------------------------------------


def tokens(*texts: str, first: int = 1) -> list[TokenEvent]:
    return [TokenEvent(seq=first + i, text=t) for i, t in enumerate(texts)]


def test_emit_appends_once_by_seq_and_publishes(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    pubsub = jobs.redis.pubsub()
    pubsub.subscribe(K.channel(rec.id))
    pubsub.get_message(timeout=1)
    assert jobs(jobs.ops.emit(rec, L1, tokens("a", "b"), 2)).verdict is Emitted.ok
    assert jobs(jobs.ops.emit(rec, L1, tokens("a", "b", "é"), 3)).verdict is Emitted.ok
    assert jobs.redis.get(K.output(rec.id)) == "abé"
    logged = [e for e in parse_log(jobs.redis.lrange(K.replay(rec.id), 0, -1))
              if isinstance(e, TokenEvent)]
    assert [e.seq for e in logged] == [1, 2, 3]
    message = pubsub.get_message(timeout=1)
    assert message is not None and parse_batch(message["data"]) == tokens("a", "b")
    assert load(jobs, rec).completion_tokens == 3
    pubsub.close()


def test_emit_refuses_a_batch_that_would_leave_a_gap(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    jobs(jobs.ops.emit(rec, L1, tokens("a"), 1))
    result = jobs(jobs.ops.emit(rec, L1, tokens("c", first=3), 3))
    assert (result.verdict, result.stored_seq) == (Emitted.gap, 1)
    assert jobs.redis.get(K.output(rec.id)) == "a"


def test_emit_reports_a_cancel_request(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    assert jobs(jobs.ops.cancel(rec)).verdict == "stopping"
    assert jobs(jobs.ops.emit(rec, L1, tokens("x"), 1)).verdict is Emitted.cancel


def test_emit_from_a_worker_that_lost_the_job_writes_nothing(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    assert jobs(jobs.ops.emit(rec, L2, tokens("x"), 1)).verdict is Emitted.lost
    assert jobs.redis.get(K.output(rec.id)) == ""


# --- finish, cancel, expire ---------------------------------------------------------------


def test_only_the_owner_finishes_and_only_once(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    assert jobs(jobs.ops.finish(rec, JobStatus.succeeded, L2)) == "lost"
    done = jobs.ops.finish(rec, JobStatus.succeeded, L1, finish_reason="stop",
                           usage={"prompt_tokens": 3, "completion_tokens": 2})
    assert jobs(done) == "ok"
    assert jobs(jobs.ops.finish(rec, JobStatus.failed, L1, finish_reason="error")) == (
        "succeeded")
    back = load(jobs, rec)
    assert (back.status, back.finish_reason, back.owner) == (JobStatus.succeeded, "stop", None)
    assert back.finished_at is not None
    assert jobs.redis.hget(K.running(), rec.id) is None
    for key in (K.job(rec.id), K.output(rec.id), K.replay(rec.id)):
        assert 0 < jobs.redis.ttl(key) <= CFG.retention_s
    assert jobs.redis.hget(K.queue_stats("q"), "jobs|succeeded|m") == "1"
    assert [t.to for t in transitions(jobs.redis)] == ["queued", "running", "succeeded"]
    assert [s.status for s in statuses(jobs.redis, rec)] == ["running", "succeeded"]


def test_failure_transition_names_its_code(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    error = {"code": "timeout", "message": "too long"}
    assert jobs(jobs.ops.finish(rec, JobStatus.failed, L1, error=error)) == "ok"
    assert transitions(jobs.redis)[-1].code == "timeout"
    assert load(jobs, rec).error == error


def test_cancel_of_a_queued_job_ends_it_at_once(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    assert jobs(jobs.ops.cancel(rec)) == Cancelled("cancelled", "cancelled")
    back = load(jobs, rec)
    assert (back.status, back.finish_reason) == (JobStatus.cancelled, "cancelled")
    assert jobs.redis.zrank(K.waiting("q"), rec.id) is None
    assert jobs(jobs.ops.cancel(rec)) == Cancelled("ended", "cancelled")  # nothing changed


def test_cancel_of_a_running_job_asks_its_worker(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    listener = jobs.redis.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(K.cancels())
    listener.get_message(timeout=1)  # the subscription's confirmation
    assert jobs(jobs.ops.cancel(rec)) == Cancelled("stopping", "running")
    assert jobs.redis.exists(K.cancel(rec.id))  # read at the worker's next write
    told = listener.get_message(timeout=2)  # and told at once
    assert told is not None and told["data"] == rec.id
    assert listener.get_message(timeout=0.2) is None  # once
    listener.close()
    assert load(jobs, rec).status is JobStatus.running
    assert jobs(jobs.ops.finish(rec, JobStatus.cancelled, L1, finish_reason="cancelled")) == "ok"
    assert not jobs.redis.exists(K.cancel(rec.id))
    assert jobs(jobs.ops.cancel(rec)) == Cancelled("ended", "cancelled")
    assert jobs(jobs.ops.cancel(record())).verdict == "missing"


def test_expire_ends_only_queued_jobs_that_are_due(jobs: BlockingJobs) -> None:
    later = created(jobs)
    assert jobs(jobs.ops.expire(later)) == "not_due"
    assert jobs.redis.zscore(K.expiry(), later.id) is not None  # still watched
    due = created(jobs, expires_at=time.time() - 1)
    assert jobs(jobs.ops.due()) == [due.id]
    assert jobs(jobs.ops.expire(due)) == "expired"
    assert load(jobs, due).status is JobStatus.expired
    assert transitions(jobs.redis)[-1].to == "expired"
    assert jobs(jobs.ops.due()) == []
    busy = running(jobs)
    assert jobs(jobs.ops.expire(busy)) == "running"


# --- requeue and sending ---------------------------------------------------------------------


def test_requeue_gives_the_job_a_new_dispatch(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    jobs(jobs.ops.emit(rec, L1, tokens("par", "tial"), 2))
    assert jobs(jobs.ops.requeue(rec, W2, max_attempts=3)).verdict == "skip"  # not W2's
    requeued = jobs(jobs.ops.requeue(rec, W1, max_attempts=3))
    assert (requeued.verdict, requeued.dispatch) == ("requeued", 2)
    back = load(jobs, rec)
    assert (back.status, back.owner, back.dispatch) == (JobStatus.queued, None, 2)
    assert jobs.redis.hget(K.running(), rec.id) is None
    assert jobs(jobs.ops.position(back)) == 0
    assert jobs.redis.zscore(K.unsent(), rec.id) is not None
    assert transitions(jobs.redis)[-1].code == "worker_lost"
    # the gone worker can write nothing more, its old message is stale
    assert jobs(jobs.ops.emit(rec, L1, tokens("x", first=3), 3)).verdict is Emitted.lost
    assert jobs(jobs.ops.start(rec.id, "q", 1, W2, L2)).verdict == "stale"
    restarted = jobs(jobs.ops.start(rec.id, "q", 2, W2, L2))
    assert (restarted.verdict, restarted.attempt) == ("run", 2)
    assert jobs.redis.get(K.output(rec.id)) == "partial"  # the next attempt continues it


def test_requeue_fails_the_job_once_its_attempts_are_used(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    assert jobs(jobs.ops.requeue(rec, W1, max_attempts=1)).verdict == "failed"
    back = load(jobs, rec)
    assert back.status is JobStatus.failed and back.error is not None
    assert back.error["code"] == "worker_lost"
    assert "1 attempt" in back.error["message"]


def test_requeue_of_a_job_its_caller_cancelled_ends_it(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    jobs(jobs.ops.cancel(rec))
    assert jobs(jobs.ops.requeue(rec, W1, max_attempts=3)).verdict == "cancelled"
    assert load(jobs, rec).status is JobStatus.cancelled


def test_claim_unsent_waits_for_the_grace_period_and_claims_once(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    assert jobs(jobs.ops.claim_unsent(grace_s=60)) == []
    [claimed] = jobs(jobs.ops.claim_unsent(grace_s=-1))
    assert (claimed.job_id, claimed.queue, claimed.dispatch) == (rec.id, "q", 1)
    assert jobs(jobs.ops.claim_unsent(grace_s=5)) == []  # another sweeper, just after
    jobs(jobs.ops.cancel(rec))
    assert jobs(jobs.ops.claim_unsent(grace_s=-1)) == []  # ended: nothing to send
    assert jobs.redis.zscore(K.unsent(), rec.id) is None


def test_running_lists_jobs_and_their_workers(jobs: BlockingJobs) -> None:
    a, b = running(jobs, W1), running(jobs, W2)
    assert jobs(jobs.ops.running()) == {a.id: W1, b.id: W2}


# --- persistence, workers ----------------------------------------------------------------------


def test_set_persisted_leaves_no_partial_record_of_an_expired_job(jobs: BlockingJobs) -> None:
    assert jobs(jobs.ops.set_persisted("job_gone")) is False
    assert not jobs.redis.exists(K.job("job_gone"))
    rec = created(jobs)
    assert jobs(jobs.ops.set_persisted(rec.id)) is True
    assert load(jobs, rec).persisted is True


def test_park_queues_the_write_and_marks_the_job(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    assert jobs(jobs.ops.park(rec.id, '{"x": 1}')) is True
    assert load(jobs, rec).persisted is False
    assert jobs.redis.lrange(K.outbox(), 0, -1) == ['{"x": 1}']
    assert jobs(jobs.ops.park("job_gone", "{}", dead=True)) is False
    assert jobs.redis.lrange(K.outbox_dead(), 0, -1) == ["{}"]


def test_live_workers_are_those_with_a_fresh_beat(jobs: BlockingJobs) -> None:
    now = time.time()
    for worker, beat in ((W1, now), (W2, now - 60)):
        jobs.redis.hset(K.worker(worker), mapping={"worker_id": worker, "queue": "q"})
        jobs.redis.zadd(K.workers(), {worker: beat})
    assert jobs(jobs.ops.live_workers(ttl_s=10)) == [{"worker_id": W1, "queue": "q"}]


def test_a_job_loaded_after_expiry_is_gone_not_missing(jobs: BlockingJobs) -> None:
    rec = created(jobs)
    jobs.redis.delete(K.job(rec.id))
    loaded = jobs(jobs.ops.load(rec.id))
    assert loaded.record is None and loaded.gone


def test_status_events_written_in_lua_are_typed_events(jobs: BlockingJobs) -> None:
    rec = running(jobs)
    jobs(jobs.ops.finish(rec, JobStatus.failed, L1, error={"code": "x", "message": "y"}))
    raw = jobs.redis.lrange(K.replay(rec.id), 0, -1)
    assert [json.loads(r)["type"] for r in raw] == ["status", "status"]
    assert [s.status for s in statuses(jobs.redis, rec)] == ["running", "failed"]
