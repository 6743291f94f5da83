"""The stream hub against a real Redis: it subscribes only to the channels of the jobs
its subscribers follow, the subscription is confirmed before a subscriber is handed its
queue (so the replay log read after it leaves no gap), the last to leave unsubscribes,
and a broken connection is replaced, every channel still followed subscribed again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from api.streams import StreamHub
from shared.events import TokenEvent
from shared.keys import Keys

KEYS = Keys("hubtest")


def batch(seq: int) -> str:
    return json.dumps([{"type": "token", "seq": seq, "text": f"t{seq}"}])


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    """Wait for a state (not a duration): ``check()`` true, polled."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


def run(redis_url: str, body: Callable[[StreamHub, aredis.Redis], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        hub = StreamHub(aredis.Redis.from_url(
            redis_url, decode_responses=True, health_check_interval=0,
            retry=Retry(NoBackoff(), retries=0)), KEYS, patience_s=10)
        other = aredis.Redis.from_url(redis_url, decode_responses=True)
        await hub.start()
        try:
            return await body(hub, other)
        finally:
            await hub.stop()
            await other.aclose()

    return asyncio.run(main())


async def subscribers(client: aredis.Redis, job_id: str) -> int:
    [(_, count)] = await client.pubsub_numsub(KEYS.channel(job_id))
    return int(count)


def test_only_followed_jobs_are_received_and_the_subscription_is_confirmed_first(
        redis_url: str) -> None:
    async def body(hub: StreamHub, other: aredis.Redis) -> None:
        async with hub.subscribe("a") as queue:
            # Handed over only once Redis holds the subscription: nothing published now
            # can be missed by a log read that follows.
            assert await subscribers(other, "a") == 1
            assert await subscribers(other, "b") == 0
            await other.publish(KEYS.channel("b"), batch(1))  # nobody here follows b
            await other.publish(KEYS.channel("a"), batch(7))
            assert await asyncio.wait_for(queue.get(), 10) == [TokenEvent(seq=7, text="t7")]
            assert hub.stats.messages == 1  # b's message never reached this process
            assert hub.channel_count == 1
        await until(lambda: _is(subscribers(other, "a"), 0))  # the last left: unsubscribed
        assert hub.channel_count == 0 and hub.subscriber_count == 0

    run(redis_url, body)


async def _is(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


def test_one_subscription_for_many_local_followers(redis_url: str) -> None:
    async def body(hub: StreamHub, other: aredis.Redis) -> None:
        async with hub.subscribe("j") as first, hub.subscribe("j") as second:
            assert await subscribers(other, "j") == 1  # one connection, one subscription
            await other.publish(KEYS.channel("j"), batch(1))
            for queue in (first, second):
                assert await asyncio.wait_for(queue.get(), 10) == [TokenEvent(seq=1, text="t1")]
            assert hub.stats.messages == 1  # received once, handed to both
        await until(lambda: _is(subscribers(other, "j"), 0))

    run(redis_url, body)


def test_churn_leaves_the_subscription_consistent(redis_url: str) -> None:
    """Followers of one job come and go at once (some cancelled before their
    subscription is confirmed): whoever is handed a queue is subscribed, and once all
    have left the channel is unsubscribed."""
    async def follower(hub: StreamHub, other: aredis.Redis, i: int) -> None:
        async with hub.subscribe("c") as queue:
            assert await subscribers(other, "c") == 1
            await other.publish(KEYS.channel("c"), batch(i))
            while True:  # its own message arrives (others' may come first)
                events = await asyncio.wait_for(queue.get(), 10)
                if events and any(e.seq == i for e in events if isinstance(e, TokenEvent)):
                    return

    async def quitter(hub: StreamHub) -> None:
        task = asyncio.create_task(_enter(hub, "c"))
        await asyncio.sleep(0)  # its SUBSCRIBE is queued, not yet confirmed
        task.cancel()

    async def body(hub: StreamHub, other: aredis.Redis) -> None:
        for round_ in range(20):
            await asyncio.gather(*(follower(hub, other, round_ * 10 + i) for i in range(5)),
                                 quitter(hub), quitter(hub))
        await until(lambda: _is(subscribers(other, "c"), 0))
        await until(lambda: _true(not hub._channels))

    run(redis_url, body)


async def _enter(hub: StreamHub, job_id: str) -> None:
    async with hub.subscribe(job_id):
        await asyncio.sleep(3600)


async def _true(value: bool) -> bool:
    return value


def test_a_broken_connection_resubscribes_and_tells_readers_to_reread(redis_url: str) -> None:
    async def body(hub: StreamHub, other: aredis.Redis) -> None:
        async with hub.subscribe("r") as queue:
            killed = await other.client_kill_filter(_type="pubsub")
            assert killed >= 1
            # The next connection subscribes again; the reader is told to re-read the log
            # (what was published meanwhile is there), then gets live events again.
            assert await asyncio.wait_for(queue.get(), 10) is None
            assert await subscribers(other, "r") == 1
            await other.publish(KEYS.channel("r"), batch(3))
            assert await asyncio.wait_for(queue.get(), 10) == [TokenEvent(seq=3, text="t3")]
            assert hub.stats.reconnects >= 1
        await until(lambda: _is(subscribers(other, "r"), 0))

    run(redis_url, body)


def test_a_subscriber_gives_up_on_an_unreachable_redis_after_its_patience() -> None:
    from ops.devstack import free_port
    from shared.errors import Unavailable

    async def main() -> None:
        hub = StreamHub(aredis.Redis(port=free_port(), health_check_interval=0,
                                     retry=Retry(NoBackoff(), retries=0)),
                        KEYS, patience_s=0.5)
        await hub.start()
        try:
            with pytest.raises(Unavailable, match="pub/sub"):
                async with hub.subscribe("x"):
                    raise AssertionError("handed a queue without a subscription")
            assert hub.subscriber_count == 0 and not hub._channels
        finally:
            await hub.stop()

    asyncio.run(main())
