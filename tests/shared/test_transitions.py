"""Consumers read the transition log with acknowledgement: nothing missed, even when
a consumer dies between reading an entry and handling it."""

from __future__ import annotations

import redis

from shared.lifecycle import BlockingJobs
from shared.schemas import JobStatus
from shared.transitions import TransitionReader
from tests.shared.test_lifecycle import CFG, L1, created, running


def test_a_group_reads_every_transition_in_order(redis_client: redis.Redis) -> None:
    reader = TransitionReader(redis_client, CFG.keys, "hooks", "c1")
    reader.ensure_group()
    reader.ensure_group()  # again: harmless
    jobs = BlockingJobs(redis_client, CFG)
    rec = running(jobs)
    jobs(jobs.ops.finish(rec, JobStatus.succeeded, L1))
    entries = reader.read(block_s=0.1)
    assert [(e.transition.job_id, e.transition.to) for e in entries] == [
        (rec.id, "queued"), (rec.id, "running"), (rec.id, "succeeded")]
    reader.ack(*(e.id for e in entries))
    assert reader.read(block_s=0.1) == []


def test_an_unacknowledged_entry_is_claimed_by_another_member(
    redis_client: redis.Redis,
) -> None:
    first = TransitionReader(redis_client, CFG.keys, "hooks", "c1", claim_idle_s=0)
    first.ensure_group()
    jobs = BlockingJobs(redis_client, CFG)
    rec = created(jobs)
    [entry] = first.read(block_s=0.1)  # read, then "died" before acknowledging
    second = TransitionReader(redis_client, CFG.keys, "hooks", "c2", claim_idle_s=0)
    [again] = second.read(block_s=0.1)
    assert (again.id, again.transition.job_id) == (entry.id, rec.id)
    second.ack(again.id)
    assert second.read(block_s=0.1) == []


def test_two_groups_each_see_everything(redis_client: redis.Redis) -> None:
    hooks = TransitionReader(redis_client, CFG.keys, "hooks", "c")
    metrics = TransitionReader(redis_client, CFG.keys, "metrics", "c")
    for reader in (hooks, metrics):
        reader.ensure_group()
    created(BlockingJobs(redis_client, CFG))
    assert len(hooks.read(block_s=0.1)) == len(metrics.read(block_s=0.1)) == 1


def test_a_redis_that_lost_the_group_gets_it_back_and_misses_nothing(
    redis_client: redis.Redis,
) -> None:
    """Issue 30: after a flush (or a Redis restarted without persistence) the webhook
    worker logged "transition log unreachable" every second and never delivered again."""
    reader = TransitionReader(redis_client, CFG.keys, "lost", "c1")
    reader.ensure_group()
    redis_client.delete(CFG.keys.transitions())  # the stream and its groups are gone
    jobs = BlockingJobs(redis_client, CFG)
    rec = created(jobs)  # written after Redis came back
    entries = reader.read(block_s=0.1)
    assert [(e.transition.job_id, e.transition.to) for e in entries] == [(rec.id, "queued")]
    reader.ack(*(e.id for e in entries))
    assert reader.read(block_s=0.1) == []
