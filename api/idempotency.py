"""Idempotent submits: the ``Idempotency-Key`` header of ``POST /v1/jobs`` and ``/invocations``.

What must hold: for one tenant and key, within 24 h, at most one job is made,
however the requests interleave. The first request claims the key (SET NX, the
body's hash and a token of its own) *before* its job exists; it records the job
once it is queued, or gives the key up (only its own claim) if the submit fails,
so a retry can try again. A repeat with the same body gets the original job
back and queues nothing; with another body, ``409``. A repeat that arrives while
the first is still being admitted waits for it (up to ``PENDING_WAIT_S``, then
``409``). A claim whose process died mid-submit lapses after ``PENDING_TTL_S``.

The key is stored as its SHA-256, so a long or odd key is never a Redis key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass

import redis.asyncio as aredis
from redis.exceptions import WatchError

from shared.errors import IdempotencyConflict
from shared.keys import Keys
from shared.schemas import JobRequest

TTL_S = 24 * 3600  # how long a key names its job
PENDING_TTL_S = 60  # how long a claim lives while its submit is under way
PENDING_WAIT_S = 10.0  # how long a repeat waits for the first request of its key
KEY_MAX = 255  # longest Idempotency-Key accepted


def body_hash(req: JobRequest) -> str:
    """The request as chatq reads it (so key order and spacing do not matter)."""
    canonical = json.dumps(req.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Claim:
    key: str  # the Redis key
    value: str  # what this request wrote (empty when it found an earlier job)
    body: str  # the body hash
    job_id: str | None  # the job an earlier request made with this key


class Idempotency:
    def __init__(self, client: aredis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    async def claim(self, tenant: str, key: str, body: str) -> Claim:
        """Claim ``key`` for a new job, or find the job an earlier request made with it."""
        rkey = self.keys.idempotency(tenant, hashlib.sha256(key.encode()).hexdigest())
        mine = json.dumps({"body": body, "job": "", "token": secrets.token_hex(8)})
        deadline = time.monotonic() + PENDING_WAIT_S
        while True:
            if await self.redis.set(rkey, mine, nx=True, ex=PENDING_TTL_S):
                return Claim(rkey, mine, body, None)
            raw = await self.redis.get(rkey)
            if raw is None:
                continue  # given up meanwhile: claim it again
            held = json.loads(raw)
            if held["body"] != body:
                raise IdempotencyConflict(
                    "this Idempotency-Key was already used with a different request body",
                    details={"field": "Idempotency-Key"})
            if held["job"]:
                return Claim(rkey, "", body, held["job"])
            if time.monotonic() > deadline:
                raise IdempotencyConflict(
                    "a request with this Idempotency-Key is still being processed; retry",
                    details={"field": "Idempotency-Key"}, headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)

    async def complete(self, claim: Claim, job_id: str) -> None:
        """The claim's job exists: the key names it for 24 h."""
        await self.redis.set(claim.key, json.dumps({"body": claim.body, "job": job_id}),
                             ex=TTL_S)

    async def release(self, claim: Claim) -> None:
        """The submit failed: give the key up, if it is still this request's claim."""
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(claim.key)
                if await pipe.get(claim.key) == claim.value:
                    pipe.multi()
                    pipe.delete(claim.key)
                    await pipe.execute()
            except WatchError:
                pass  # it changed meanwhile: not ours to remove
