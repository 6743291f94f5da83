"""Prompt-cache affinity (shared.affinity): the key a finished turn is noted under is the
key its next turn looks up, whichever way the client sends the conversation; the route
script sends a job to the noted worker only while it beats with a free slot; the sweeper
sends a job stranded in a gone worker's own queue to its shared queue."""

from __future__ import annotations

import time

import redis

from shared.affinity import after_turn, next_turn, own_queue
from shared.keys import celery_queue_lists
from shared.lifecycle import BlockingJobs, JobRecord
from shared.schemas import JobStatus
from tests.shared.test_lifecycle import CFG, W1, W2, created
from tests.shared.test_recovery import FakeDispatcher, beat, jobs, status, sweeper

__all__ = ["jobs"]  # the fixture

SYSTEM = {"role": "system", "content": "You are terse."}
Q1 = {"role": "user", "content": "Name a river."}


def test_a_resent_history_finds_the_turn_it_continues() -> None:
    [noted] = after_turn([SYSTEM, Q1], None, "The Nile.")
    follow_up = [SYSTEM, Q1, {"role": "assistant", "content": "The Nile."},
                 {"role": "user", "content": "How long is it?"}]
    assert next_turn(follow_up, None) == noted
    # content parts read as their text, as a client may send them
    parts = [SYSTEM, {"role": "user", "content": [{"type": "text", "text": "Name a river."}]},
             {"role": "assistant", "content": "The Nile."}, follow_up[-1]]
    assert next_turn(parts, None) == noted


def test_another_history_or_answer_finds_nothing_of_it() -> None:
    [noted] = after_turn([SYSTEM, Q1], None, "The Nile.")
    other_answer = [SYSTEM, Q1, {"role": "assistant", "content": "The Amazon."},
                    {"role": "user", "content": "How long is it?"}]
    assert next_turn(other_answer, None) != noted
    assert next_turn([SYSTEM, Q1], None) != noted  # a first turn
    assert next_turn([Q1], None) is None  # nothing before it
    assert next_turn([SYSTEM, Q1, {"role": "assistant", "content": "x"}], None) is None


def test_a_stored_conversation_is_found_by_its_id() -> None:
    assert after_turn([Q1], "conv-1", "The Nile.") == [next_turn([Q1], "conv-1")]
    assert next_turn([Q1], "conv-1") == "c:conv-1"


def test_a_conversation_the_api_made_is_found_either_way() -> None:
    """Chat completions store each request as a new conversation: its next turn comes
    with the whole history (or by the conversation's id, through /v1/jobs)."""
    assert next_turn([SYSTEM, Q1], "conv-1", fresh=True) != "c:conv-1"
    noted = after_turn([SYSTEM, Q1], "conv-1", "The Nile.", fresh=True)
    follow_up = [SYSTEM, Q1, {"role": "assistant", "content": "The Nile."},
                 {"role": "user", "content": "How long is it?"}]
    assert noted == ["c:conv-1", next_turn(follow_up, "conv-2", fresh=True)]


def note(jobs: BlockingJobs, rec: JobRecord, worker: str) -> str:
    turn = "c:conv-1"
    jobs.redis.set(CFG.keys.affinity(rec.queue, rec.tenant, turn), worker)
    return turn


def slots(jobs: BlockingJobs, worker: str, total: int, busy: int) -> None:
    jobs.redis.hset(CFG.keys.worker(worker), mapping={"slots": total, "slots_busy": busy})


def horizon() -> float:
    return time.time() - 5


def test_a_job_is_routed_to_its_worker_while_it_beats_with_a_free_slot(
        jobs: BlockingJobs) -> None:
    beat(jobs, W1)
    slots(jobs, W1, total=4, busy=3)
    rec = created(jobs)
    assert jobs(jobs.ops.route(rec, note(jobs, rec, W1), horizon())) == W1
    assert jobs.redis.zscore(CFG.keys.routed(), rec.id) is not None


def test_a_full_or_gone_worker_is_not_waited_for(jobs: BlockingJobs) -> None:
    beat(jobs, W1)
    slots(jobs, W1, total=4, busy=4)
    rec = created(jobs)
    turn = note(jobs, rec, W1)
    assert jobs(jobs.ops.route(rec, turn, horizon())) == ""  # full: the shared queue
    beat(jobs, W1, age_s=60)
    assert jobs(jobs.ops.route(rec, turn, horizon())) == ""
    # a gone worker's affinity is dropped
    assert not jobs.redis.exists(CFG.keys.affinity(rec.queue, rec.tenant, turn))
    assert jobs(jobs.ops.route(rec, "c:unknown", horizon())) == ""
    assert jobs.redis.zcard(CFG.keys.routed()) == 0


def test_another_tenants_turn_is_not_found(jobs: BlockingJobs) -> None:
    beat(jobs, W1)
    slots(jobs, W1, total=4, busy=0)
    theirs = created(jobs, tenant="globex")
    turn = note(jobs, theirs, W1)
    mine = created(jobs, tenant="acme")
    assert jobs(jobs.ops.route(mine, turn, horizon())) == ""


def test_a_job_stranded_in_a_gone_workers_queue_goes_to_its_shared_queue(
        jobs: BlockingJobs, redis_client: redis.Redis) -> None:
    beat(jobs, W1)
    beat(jobs, W2)
    slots(jobs, W1, total=4, busy=0)
    rec = created(jobs)
    assert jobs(jobs.ops.route(rec, note(jobs, rec, W1), horizon())) == W1
    jobs(jobs.ops.sent(rec.id, rec.dispatch))
    lists = celery_queue_lists(own_queue(rec.queue, W1))
    redis_client.lpush(lists[0], "the message of dispatch 1")
    dispatcher = FakeDispatcher()
    assert sweeper(jobs, dispatcher).sweep().rerouted == []  # its worker beats: it waits
    beat(jobs, W1, age_s=60)  # the worker died before taking it
    report = sweeper(jobs, dispatcher).sweep()
    assert report.rerouted == [rec.id] and report.sent == [rec.id]
    assert dispatcher.sent == [(rec.id, rec.queue, 2, rec.lane)]  # shared queue, dispatch 2
    assert status(jobs, rec).dispatch == 2 and status(jobs, rec).status is JobStatus.queued
    assert not any(redis_client.exists(name) for name in lists)  # its stale queue is gone
    assert sweeper(jobs, dispatcher).sweep().rerouted == []  # once
    assert redis_client.zcard(CFG.keys.routed()) == 0


def test_a_routed_job_that_started_leaves_the_routed_list(jobs: BlockingJobs) -> None:
    beat(jobs, W1)
    slots(jobs, W1, total=4, busy=0)
    rec = created(jobs)
    assert jobs(jobs.ops.route(rec, note(jobs, rec, W1), horizon())) == W1
    assert jobs(jobs.ops.start(rec.id, rec.queue, rec.dispatch, W1, "lease")).verdict == "run"
    beat(jobs, W1, age_s=60)  # gone while running it: requeued, never rerouted
    report = sweeper(jobs, FakeDispatcher()).sweep()
    assert report.rerouted == [] and report.requeued == [rec.id]
    assert jobs.redis.zcard(CFG.keys.routed()) == 0
