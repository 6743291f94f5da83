"""The store's transitions are atomic: a second delivery, a late finish, too many attempts."""

from __future__ import annotations

import time

import pytest
import redis

from shared.jobstore import JobRecord, StoreConfig, WorkerJobStore, new_job_id
from shared.keys import Keys
from shared.schemas import JobStatus, SamplingParams

CFG = StoreConfig(keys=Keys("t"), max_age_s=60, retention_s=30, tombstone_s=60)


@pytest.fixture
def store(redis_client: redis.Redis) -> WorkerJobStore:
    return WorkerJobStore(redis_client, CFG)


def queued(store: WorkerJobStore) -> JobRecord:
    record = JobRecord(
        id=new_job_id(), status=JobStatus.queued, model="m", queue="q", tenant="t",
        params=SamplingParams(max_tokens=8, temperature=0, top_p=1),
        messages=[{"role": "user", "content": "hi"}], created_at=time.time(),
    )
    k = CFG.keys
    store.redis.hset(k.job(record.id), mapping={
        "id": record.id, "status": "queued", "model": "m", "queue": "q", "tenant": "t",
        "params": record.params.model_dump_json(), "messages": '[]',
        "created_at": record.created_at, "attempts": 0})
    store.redis.zadd(k.waiting("q"), {record.id: 1})
    return record


def test_ids_are_unguessable() -> None:
    ids = {new_job_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) >= 20 for i in ids)


def test_start_moves_to_running_and_leaves_the_waiting_line(store: WorkerJobStore) -> None:
    record = queued(store)
    assert store.start(record, max_attempts=3) == ("run", "1")
    loaded = store.load(record.id)
    assert loaded is not None and loaded[0].status is JobStatus.running
    assert store.redis.zrank(CFG.keys.waiting("q"), record.id) is None


def test_second_delivery_counts_attempts_until_exhausted(store: WorkerJobStore) -> None:
    record = queued(store)
    assert store.start(record, 2) == ("run", "1")
    assert store.start(record, 2) == ("run", "2")
    assert store.start(record, 2) == ("exhausted", "3")


def test_only_the_first_finish_wins(store: WorkerJobStore) -> None:
    record = queued(store)
    store.start(record, 3)
    assert store.finish(record, JobStatus.succeeded, finish_reason="stop") == "ok"
    assert store.finish(record, JobStatus.failed, finish_reason="error") == "succeeded"
    loaded = store.load(record.id)
    assert loaded is not None and loaded[0].finish_reason == "stop"
    assert store.start(record, 3) == ("terminal", "succeeded")
    assert 0 < store.redis.ttl(CFG.keys.job(record.id)) <= CFG.retention_s


def test_transitions_are_published_and_logged(store: WorkerJobStore) -> None:
    record = queued(store)
    pubsub = store.redis.pubsub()
    pubsub.subscribe(CFG.keys.channel(record.id))
    pubsub.get_message(timeout=1)
    store.start(record, 3)
    message = pubsub.get_message(timeout=1)
    assert message is not None and '"status":"running"' in message["data"]
    assert any('"running"' in e for e in store.redis.lrange(CFG.keys.events(record.id), 0, -1))
    pubsub.close()
