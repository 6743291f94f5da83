"""Per-tenant rate limits: requests and tokens per minute, and concurrent jobs.

``CHATQ_API__RATE_LIMITS`` (JSON) gives each tenant its limits, ``"*"`` any tenant without
its own (limits set with the admin API or ``python -m ops.keys set-limits``, kept in
MongoDB, override them for their tenant within seconds):
``{"*": {"requests_per_minute": 600}, "alpha": {"tokens_per_minute": 50000,
"concurrent_jobs": 8}}``. Every limit is optional; a tenant with none is not limited.

What must hold:

- **Shared by every API process**: the counters live in Redis (fixed one-minute windows
  per tenant; one Lua script checks every limit and reserves at once), so replicas agree.
- **Tokens as admitted, settled as used**: a job reserves its prompt tokens plus
  ``max_tokens`` in the current minute's window; when it ends, the lifecycle's finish
  (``shared/lua/lib.lua``, ``account_tenant``) gives back what it did not use, if that window
  is still current. A job refused after its reservation (queue full, broker down) gives
  everything back (:meth:`Limiter.release`).
- **Concurrent jobs** are the tenant's unfinished jobs: a set of job ids that the finish
  script leaves; ids whose job is gone are pruned before a refusal.
- **OpenAI's headers**: ``x-ratelimit-limit-requests``, ``-remaining-requests``,
  ``-reset-requests`` and the same for ``tokens``, on every admitted request and on the
  ``429`` (``rate_limit_exceeded``, with ``Retry-After``), so OpenAI's SDK and LiteLLM back
  off as they do against OpenAI. The headers of a request reach its response through
  :class:`RateHeaders` (an ASGI middleware), whatever the route answers.
"""

from __future__ import annotations

import contextvars
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ChatqError
from shared.keys import Keys
from shared.keystore import KeyCache
from shared.lifecycle import lua_constants
from shared.settings import RateLimits, Settings

WINDOW_S = 60

# KEYS: 1 requests window, 2 tokens window, 3 active set
# ARGV: 1 rpm, 2 tpm, 3 concurrent (0: none), 4 tokens, 5 job id, 6 job key prefix,
#       7 window ttl
# Returns {verdict, requests used, tokens used, active}: verdict 'ok' (reserved), or the
# limit that refused: 'requests', 'tokens', 'concurrent' (nothing reserved).
_RESERVE = """
local rpm, tpm, most = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])
local used_r = tonumber(redis.call('GET', KEYS[1]) or '0')
local used_t = tonumber(redis.call('GET', KEYS[2]) or '0')
local active = redis.call('SCARD', KEYS[3])
if most > 0 and active >= most then
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    local status = redis.call('HGET', ARGV[6] .. id, 'status')
    if not status or TERMINAL[status] then redis.call('SREM', KEYS[3], id) end
  end
  active = redis.call('SCARD', KEYS[3])
  if active >= most then return {'concurrent', used_r, used_t, active} end
end
if rpm > 0 and used_r >= rpm then return {'requests', used_r, used_t, active} end
if tpm > 0 and used_t + tokens > tpm then return {'tokens', used_r, used_t, active} end
used_r = redis.call('INCR', KEYS[1])
used_t = redis.call('INCRBY', KEYS[2], tokens)
redis.call('EXPIRE', KEYS[1], ARGV[7])
redis.call('EXPIRE', KEYS[2], ARGV[7])
redis.call('SADD', KEYS[3], ARGV[5])
return {'ok', used_r, used_t, active + 1}
"""

# KEYS: 1 requests window, 2 tokens window, 3 active set; ARGV: 1 tokens, 2 job id
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECR', KEYS[1]) end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], ARGV[1]) end
redis.call('SREM', KEYS[3], ARGV[2])
"""


_current: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "chatq_rate_headers", default=None)


class RateLimited(ChatqError):
    """A tenant over one of its rate limits: 429 with OpenAI's headers."""

    code = "rate_limit_exceeded"
    status = 429


@dataclass(frozen=True)
class Reservation:
    """What a job took from its tenant's windows (given back by :meth:`Limiter.release`
    when the job is not made, settled by the finish script when it ends)."""

    requests_key: str
    tokens_key: str
    active_key: str
    tokens: int
    job_id: str

    def for_job(self) -> dict[str, Any]:
        """The job record's ``rate`` field, read by the finish script."""
        return {"tokens_key": self.tokens_key, "reserved": self.tokens,
                "active_key": self.active_key}


def _reset(seconds: float) -> str:
    """OpenAI's duration format: ``1s``, ``6m0s``."""
    whole = max(1, math.ceil(seconds))
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class Limiter:
    def __init__(self, redis: Redis, keys: Keys, settings: Settings, stored: KeyCache) -> None:
        self.redis, self.keys, self.stored = redis, keys, stored
        self.limits = settings.api.rate_limits
        self._reserve = redis.register_script(lua_constants() + _RESERVE)
        self._release = redis.register_script(_RELEASE)

    async def of(self, tenant: str) -> RateLimits | None:
        """The tenant's limits: set with the admin API (MongoDB), else from settings."""
        limits = await self.stored.limits(tenant)
        if limits is None:
            limits = self.limits.get(tenant, self.limits.get("*"))
        return limits if limits is not None and limits.any() else None

    async def reserve(self, tenant: str, job_id: str, tokens: int) -> Reservation | None:
        """Take one request and ``tokens`` from the tenant's window and add the job to its
        active jobs, or raise :class:`RateLimited` naming the limit. None: no limits."""
        limits = await self.of(tenant)
        if limits is None:
            return None
        now = time.time()
        window = int(now // WINDOW_S)
        res = Reservation(self.keys.rate_window(tenant, "requests", window),
                          self.keys.rate_window(tenant, "tokens", window),
                          self.keys.rate_active(tenant), tokens, job_id)
        verdict, used_r, used_t, active = await self._reserve(
            keys=[res.requests_key, res.tokens_key, res.active_key],
            args=[limits.requests_per_minute or 0, limits.tokens_per_minute or 0,
                  limits.concurrent_jobs or 0, tokens, job_id, self.keys.job(""),
                  WINDOW_S * 2])
        reset_s = WINDOW_S - now % WINDOW_S
        headers = _headers(limits, int(used_r), int(used_t), reset_s)
        if verdict != "ok":
            raise _refusal(str(verdict), limits, tokens=tokens, active=int(active),
                           headers=headers, reset_s=reset_s)
        holder = _current.get()
        if holder is not None:
            holder.update(headers)
        return res

    async def release(self, res: Reservation | None) -> None:
        if res is not None:
            await self._release(keys=[res.requests_key, res.tokens_key, res.active_key],
                                args=[res.tokens, res.job_id])


def _headers(limits: RateLimits, used_r: int, used_t: int, reset_s: float) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, limit, used in (("requests", limits.requests_per_minute, used_r),
                              ("tokens", limits.tokens_per_minute, used_t)):
        if limit:
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{kind}"] = _reset(reset_s)
    return headers


def _refusal(verdict: str, limits: RateLimits, *, tokens: int, active: int,
             headers: dict[str, str], reset_s: float) -> RateLimited:
    if verdict == "concurrent":
        message = (f"Rate limit reached on concurrent jobs: limit {limits.concurrent_jobs}, "
                   f"running or waiting {active}. Retry when one of them ends.")
        retry = 1
    elif verdict == "requests":
        message = (f"Rate limit reached on requests per min (RPM): limit "
                   f"{limits.requests_per_minute}. Retry after {_reset(reset_s)}.")
        retry = math.ceil(reset_s)
    else:
        message = (f"Rate limit reached on tokens per min (TPM): limit "
                   f"{limits.tokens_per_minute}, requested {tokens} (prompt and max_tokens). "
                   f"Retry after {_reset(reset_s)}.")
        retry = math.ceil(reset_s)
    return RateLimited(message, details={"limit": verdict},
                       headers={**headers, "Retry-After": str(max(1, retry))})


class RateHeaders:
    """Puts the rate-limit headers of the request's admission on its response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        holder: dict[str, str] = {}
        token = _current.set(holder)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and holder:
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in holder.items()
                         if k.encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            _current.reset(token)
