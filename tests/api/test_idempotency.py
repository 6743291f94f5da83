"""Idempotency keys against a real Redis: one job per (tenant, key) however requests race,
409 for another body, and a failed submit gives its key up (only its own claim)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aredis

from api import idempotency
from api.idempotency import Claim, Idempotency, body_hash
from shared.errors import IdempotencyConflict
from shared.keys import Keys
from shared.schemas import JobRequest

KEYS = Keys("t")


def run(redis_url: str, body: Callable[[Idempotency], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        client = aredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            return await body(Idempotency(client, KEYS))
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_body_hash_ignores_key_order_and_spelled_out_defaults() -> None:
    a = JobRequest.model_validate({"messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 5})
    b = JobRequest.model_validate({"max_tokens": 5, "priority": "interactive",
                                   "messages": [{"content": "hi", "role": "user"}]})
    c = JobRequest.model_validate({"messages": [{"role": "user", "content": "hi"}],
                                   "max_tokens": 6})
    assert body_hash(a) == body_hash(b) != body_hash(c)


def test_concurrent_claims_make_one_job(redis_client: redis.Redis, redis_url: str) -> None:
    """Ten identical requests at once: one claims, the others wait and get its job."""
    made: list[str] = []

    async def submit(idem: Idempotency, n: int) -> str:
        claim = await idem.claim("acme", "key-1", "h1")
        if claim.job_id is not None:
            return claim.job_id
        await asyncio.sleep(0.2)  # admission, create, send...
        made.append(f"job_{n}")
        await idem.complete(claim, f"job_{n}")
        return f"job_{n}"

    async def race(idem: Idempotency) -> list[str]:
        return list(await asyncio.gather(*(submit(idem, n) for n in range(10))))

    answers = run(redis_url, race)
    assert len(made) == 1 and answers == made * 10
    stored = json.loads(redis_client.get(next(iter(redis_client.scan_iter("t:idem:*")))) or "")
    assert stored == {"body": "h1", "job": made[0]}
    assert 0 < redis_client.ttl(next(iter(redis_client.scan_iter("t:idem:*")))) <= 86400


def test_another_body_with_the_same_key_is_a_conflict(
    redis_client: redis.Redis, redis_url: str,
) -> None:
    async def flow(idem: Idempotency) -> None:
        claim = await idem.claim("acme", "key-2", "h1")
        with pytest.raises(IdempotencyConflict, match="different request body"):
            await idem.claim("acme", "key-2", "h2")  # while the first is in progress
        await idem.complete(claim, "job_1")
        with pytest.raises(IdempotencyConflict) as refused:
            await idem.claim("acme", "key-2", "h2")
        assert refused.value.status == 409
        assert (await idem.claim("other-tenant", "key-2", "h2")).job_id is None

    run(redis_url, flow)


def test_a_failed_submit_gives_its_key_up(redis_client: redis.Redis, redis_url: str) -> None:
    async def flow(idem: Idempotency) -> None:
        first = await idem.claim("acme", "key-3", "h1")
        await idem.release(first)
        second = await idem.claim("acme", "key-3", "h1")  # the retry may go ahead
        assert second.job_id is None and second.value != first.value
        await idem.release(first)  # a late release of the old claim removes nothing
        assert await idem.redis.get(second.key) == second.value

    run(redis_url, flow)


def test_a_repeat_waits_for_the_first_then_gives_up(
    redis_client: redis.Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idempotency, "PENDING_WAIT_S", 0.3)

    async def flow(idem: Idempotency) -> Claim:
        await idem.claim("acme", "key-4", "h1")  # never completes (its process hangs)
        return await idem.claim("acme", "key-4", "h1")

    with pytest.raises(IdempotencyConflict, match="still being processed") as refused:
        run(redis_url, flow)
    assert refused.value.headers == {"Retry-After": "1"}
    key = next(iter(redis_client.scan_iter("t:idem:*")))
    assert 0 < redis_client.ttl(key) <= idempotency.PENDING_TTL_S  # a dead claim lapses
