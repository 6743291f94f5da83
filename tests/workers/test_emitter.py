"""Token batches reach Redis whole and once, even when something interrupts the flush.

An exception can land between Redis taking a batch and the emitter noting it
(a broken connection after the write, a signal); the task then flushes what
is pending. Nothing may be lost or written twice.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from shared.events import TokenEvent, parse_log
from shared.lifecycle import BlockingJobs, Emitted, JobRecord, Op
from tests.shared.test_lifecycle import CFG, L1, running
from workers.emitter import TokenEmitter
from workers.engine import Piece, TokenLogprob, TopLogprob


class Interrupted(Exception):
    pass


class InterruptedAfterWrite(BlockingJobs):
    """Raises right after Redis took the n-th batch, as an interruption there would."""

    def __init__(self, client: redis.Redis, after_batch: int) -> None:
        super().__init__(client, CFG)
        self.after_batch = after_batch
        self.calls = 0

    def __call__[T](self, op: Op[T]) -> T:
        result = super().__call__(op)
        if op.script == "emit":
            self.calls += 1
            if self.calls == self.after_batch:
                raise Interrupted
        return result


def written(client: redis.Redis, record: JobRecord) -> tuple[str, list[int]]:
    logged = parse_log(client.lrange(CFG.keys.replay(record.id), 0, -1))
    seqs = [e.seq for e in logged if isinstance(e, TokenEvent)]
    return client.get(CFG.keys.output(record.id)) or "", seqs


@pytest.mark.parametrize("after_batch", [1, 2, 3])
def test_interrupted_batch_is_neither_lost_nor_doubled(
    redis_client: redis.Redis, after_batch: int
) -> None:
    jobs = InterruptedAfterWrite(redis_client, after_batch)
    record = running(jobs)
    emitter = TokenEmitter(jobs, record, L1, coalesce_s=0)
    with pytest.raises(Interrupted):
        for text in ("a", "b", "c", "d"):
            emitter.add(Piece(text, 1))
    emitter.flush()  # what the task's `finally` does
    assert written(redis_client, record) == ("abcd"[:after_batch],
                                             list(range(1, after_batch + 1)))


def test_coalesced_pieces_go_out_together_and_count_tokens(redis_client: redis.Redis) -> None:
    jobs = BlockingJobs(redis_client, CFG)
    record = running(jobs)
    emitter = TokenEmitter(jobs, record, L1, coalesce_s=60)
    assert emitter.add(Piece("Hel", 1)) is Emitted.ok  # the first piece goes out at once
    for piece in (Piece("lo", 1), Piece("", 1), Piece(" you", 1)):
        emitter.add(piece)
    assert written(redis_client, record) == ("Hel", [1])
    assert emitter.flush() is Emitted.ok
    assert written(redis_client, record) == ("Hello you", [1, 2, 3])
    assert redis_client.hget(CFG.keys.job(record.id), "completion_tokens") == "4"


def test_events_redis_lost_are_written_again_in_order(redis_client: redis.Redis) -> None:
    jobs = BlockingJobs(redis_client, CFG)
    record = running(jobs)
    emitter = TokenEmitter(jobs, record, L1, coalesce_s=0)
    for text in ("a", "b", "c"):
        emitter.add(Piece(text, 1))
    # Redis restarts and its last acknowledged writes are gone (appendfsync everysec)
    redis_client.hset(CFG.keys.job(record.id), "seq", 1)
    redis_client.set(CFG.keys.output(record.id), "a")
    redis_client.ltrim(CFG.keys.replay(record.id), 0, 1)  # the running status and token 1
    emitter.add(Piece("d", 1))
    assert written(redis_client, record) == ("abcd", [1, 2, 3, 4])


def test_flush_reports_cancel_and_loss(redis_client: redis.Redis) -> None:
    jobs = BlockingJobs(redis_client, CFG)
    record = running(jobs)
    emitter = TokenEmitter(jobs, record, L1, coalesce_s=0)
    assert emitter.flush() is Emitted.ok
    jobs(jobs.ops.cancel(record))
    assert emitter.flush() is Emitted.cancel
    stranger = TokenEmitter(jobs, record, "other@host:9", coalesce_s=0)
    assert stranger.add(Piece("x", 1)) is Emitted.lost


def test_logprobs_travel_with_their_token_event(redis_client: redis.Redis) -> None:
    jobs = BlockingJobs(redis_client, CFG)
    record = running(jobs)
    emitter = TokenEmitter(jobs, record, L1, coalesce_s=0)
    top = [TopLogprob("Hi", -0.1, [72, 105]), TopLogprob("Yo", -2.5, [89, 111])]
    emitter.add(Piece("Hi", 1, [TokenLogprob("Hi", -0.1, [72, 105], top)]))
    raw: list[Any] = redis_client.lrange(CFG.keys.replay(record.id), 0, -1)
    [event] = [e for e in parse_log(raw) if isinstance(e, TokenEvent)]
    assert event.logprobs is not None
    assert event.logprobs[0].logprob == -0.1
    assert [t.token for t in event.logprobs[0].top_logprobs] == ["Hi", "Yo"]
