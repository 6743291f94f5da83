"""Token batches reach Redis whole and once, even when a time-limit signal interrupts.

Celery's soft time limit raises from a signal at any point of the task; the
task then flushes what is pending. Nothing may be lost or written twice.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from shared.jobstore import JobRecord, StoreConfig, WorkerJobStore, new_job_id
from shared.keys import Keys
from shared.schemas import JobStatus, SamplingParams
from workers.emitter import TokenEmitter
from workers.engine import Piece

CFG = StoreConfig(keys=Keys("e"), max_age_s=60, retention_s=30, tombstone_s=60)


class Interrupted(Exception):
    pass


class InterruptedAfterWrite(WorkerJobStore):
    """Raises right after Redis took the n-th batch, as a signal landing there would."""

    def __init__(self, client: redis.Redis, after_batch: int) -> None:
        super().__init__(client, CFG)
        self.after_batch = after_batch
        self.calls = 0

    def emit(self, record: JobRecord, events: list[dict[str, Any]],
             completion_tokens: int) -> bool:
        cancelled = super().emit(record, events, completion_tokens)
        self.calls += 1
        if self.calls == self.after_batch:
            raise Interrupted
        return cancelled


def running_job(client: redis.Redis) -> JobRecord:
    record = JobRecord(id=new_job_id(), status=JobStatus.running, model="m", queue="q",
                       tenant="t", params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
                       messages=[], created_at=time.time())
    client.hset(CFG.keys.job(record.id), mapping={"status": "running", "seq": 0})
    return record


def written(client: redis.Redis, record: JobRecord) -> tuple[str, list[int]]:
    log = [json.loads(e) for e in client.lrange(CFG.keys.events(record.id), 0, -1)]
    return client.get(CFG.keys.output(record.id)) or "", [e["seq"] for e in log]


@pytest.mark.parametrize("after_batch", [1, 2, 3])
def test_interrupted_batch_is_neither_lost_nor_doubled(
    redis_client: redis.Redis, after_batch: int
) -> None:
    store = InterruptedAfterWrite(redis_client, after_batch)
    record = running_job(redis_client)
    emitter = TokenEmitter(store, record, coalesce_s=0)
    with pytest.raises(Interrupted):
        for text in ("a", "b", "c", "d"):
            emitter.add(Piece(text, 1))
    emitter.flush()  # what the task's `finally` does
    text, seqs = written(redis_client, record)
    expected = "abcd"[:after_batch]
    assert text == expected
    assert seqs == list(range(1, after_batch + 1))


def test_resent_batch_with_new_events_keeps_the_new_ones(redis_client: redis.Redis) -> None:
    store = WorkerJobStore(redis_client, CFG)
    record = running_job(redis_client)
    one = {"type": "token", "seq": 1, "text": "x"}
    two = {"type": "token", "seq": 2, "text": "é"}
    store.emit(record, [one], 1)
    store.emit(record, [one, two], 2)
    assert written(redis_client, record) == ("xé", [1, 2])
    assert redis_client.hget(CFG.keys.job(record.id), "completion_tokens") == "2"


def test_emit_reports_cancel_flag(redis_client: redis.Redis) -> None:
    store = WorkerJobStore(redis_client, CFG)
    record = running_job(redis_client)
    assert store.emit(record, [], 0) is False
    redis_client.set(CFG.keys.cancel(record.id), "1")
    assert store.emit(record, [], 0) is True
