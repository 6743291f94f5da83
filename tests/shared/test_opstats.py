"""The finish script counts each finished job once, in the queue's operator stats."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from shared.lifecycle import BlockingJobs
from shared.opstats import RECENT_MAX, QueueCounters, percentile, read_queue, summarize
from shared.schemas import JobStatus
from tests.shared.test_lifecycle import CFG, L1, running

TIMINGS = {"queue_wait_ms": 30.0, "ttft_ms": 120.0, "duration_ms": 1500.0, "tokens_per_s": 42.0}
USAGE = {"prompt_tokens": 11, "completion_tokens": 20, "total_tokens": 31}


@pytest.fixture
def store(redis_client: redis.Redis) -> BlockingJobs:
    return BlockingJobs(redis_client, CFG)


def finish(store: BlockingJobs, status: JobStatus, **fields: Any) -> str:
    return store(store.ops.finish(running(store), status, L1, **fields))


def counters(store: BlockingJobs) -> QueueCounters:
    raw: dict[str, str] = store.redis.hgetall(CFG.keys.queue_stats("q"))  # type: ignore[assignment]
    return QueueCounters.parse(raw)


def test_finish_counts_status_tokens_and_histograms(store: BlockingJobs) -> None:
    finish(store, JobStatus.succeeded, usage=USAGE, timings=TIMINGS)
    finish(store, JobStatus.succeeded, usage=USAGE, timings=TIMINGS)
    finish(store, JobStatus.failed, error={"code": "worker_lost", "message": "x"})

    c = counters(store)
    assert c.jobs == {("m", "succeeded"): 2, ("m", "failed"): 1}
    assert c.tokens == {"m": 40} and c.prompt_tokens == {"m": 22}
    wait = c.histograms["queue_wait_seconds", "m"]
    assert wait.count == 2 and wait.sum == pytest.approx(0.06)
    cumulative = dict(wait.cumulative())
    assert cumulative["0.01"] == 0 and cumulative["0.05"] == 2 and cumulative["+Inf"] == 2
    rate = dict(c.histograms["tokens_per_second", "m"].cumulative())
    assert rate["20"] == 0 and rate["50"] == 2


def test_a_second_finish_is_not_counted_again(store: BlockingJobs) -> None:
    record = running(store)
    ops = store.ops
    assert store(ops.finish(record, JobStatus.succeeded, L1, usage=USAGE, timings=TIMINGS)) == (
        "ok")
    assert store(ops.finish(record, JobStatus.failed, L1, usage=USAGE, timings=TIMINGS)) == (
        "succeeded")
    assert counters(store).jobs == {("m", "succeeded"): 1}
    assert store.redis.llen(CFG.keys.queue_recent("q")) == 1


def test_values_over_the_last_bound_land_in_inf(store: BlockingJobs) -> None:
    finish(store, JobStatus.succeeded, usage=USAGE,
           timings={**TIMINGS, "duration_ms": 10_000_000.0, "ttft_ms": None})
    c = counters(store)
    duration = dict(c.histograms["duration_seconds", "m"].cumulative())
    assert duration["600"] == 0 and duration["+Inf"] == 1
    assert ("ttft_seconds", "m") not in c.histograms  # no first token, no observation


def test_recent_list_is_capped_and_summarized(store: BlockingJobs, redis_url: str) -> None:
    k = CFG.keys.queue_recent("q")
    store.redis.rpush(k, *['{"status": "succeeded", "finished_at": 1}'] * RECENT_MAX)
    finish(store, JobStatus.failed, usage=USAGE, timings=TIMINGS)
    assert store.redis.llen(k) == RECENT_MAX

    async def read() -> list[dict[str, Any]]:
        client = aredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return (await read_queue(client, CFG.keys, "q", recent=10))[1]
        finally:
            await client.aclose()

    recent = asyncio.run(read())
    assert len(recent) == 10
    assert recent[0]["status"] == "failed" and recent[0]["ttft_ms"] == 120.0
    summary = summarize(recent)
    assert summary["success_rate"] == 0.9
    assert summary["duration_ms"] == {"p50": 1500.0, "p90": 1500.0, "p99": 1500.0}


def test_percentiles_interpolate() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([5.0], 90) == 5.0
    assert summarize([])["success_rate"] is None


def test_prompt_cache_counters_are_added_once_per_beat(redis_client: redis.Redis) -> None:
    """The heartbeat adds what the engine counted since its last beat (cache_increments)."""
    from shared.opstats import cache_increments

    key = CFG.keys.queue_stats("q")
    sent: dict[str, int] = {}
    for now in ({"prompt_cache_hits": 1, "prompt_cache_cached_tokens": 40,
                 "prompt_cache_read_tokens": 9, "prompt_cache_tokens": 49},
                {"prompt_cache_hits": 3, "prompt_cache_cached_tokens": 100,
                 "prompt_cache_read_tokens": 20, "prompt_cache_tokens": 10}):
        for field, n in cache_increments("m", now, sent).items():
            redis_client.hincrby(key, field, n)
        sent = now
    parsed = QueueCounters.parse(redis_client.hgetall(key))  # type: ignore[arg-type]
    assert parsed.cache == {("hits", "m"): 3, ("cached_tokens", "m"): 100,
                            ("read_tokens", "m"): 20}  # the gauge (tokens) is not counted
    assert cache_increments("m", {}, sent) == {}  # an engine without a cache adds nothing
