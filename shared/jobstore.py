"""The job store: job records in Redis, with atomic state transitions.

A job is a Redis hash (see :mod:`shared.keys`). State moves
``queued -> running -> succeeded|failed|cancelled`` only through the Lua
scripts below, so two deliveries of one job, or a cancel racing a start, can
never both win. Every transition is also appended to the job's replay log and
published on its channel, so pollers and streamers see the same truth.

:class:`JobStore` is the API's side (asyncio), :class:`WorkerJobStore` the
worker's (blocking, inside the Celery task). Both run the same scripts.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio as aredis

from shared.keys import Keys
from shared.opstats import RECORD_FINISHED_LUA
from shared.schemas import JobStatus, SamplingParams
from shared.settings import Settings

# Fields stored as JSON inside the job hash; the rest are plain strings/numbers.
_JSON_FIELDS = ("params", "messages", "persona", "metadata", "usage", "timings", "error",
                "persisted")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at")
_INT_FIELDS = ("attempts", "seq", "completion_tokens", "prompt_tokens", "history_messages",
               "history_trimmed")

# KEYS: job, waiting, tombstone. ARGV: id, now, max_age, tombstone_ttl, max_depth, field, value...
# The waiting line is scored by enqueue time; entries older than max_age (jobs
# whose records expired unrun) are dropped first. Returns the job's place in
# line, or -1 when the line is at max_depth (nothing written).
_CREATE = """
local now = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[3]))
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[4])
return redis.call('ZRANK', KEYS[2], ARGV[1])
"""

# KEYS: job, waiting, out, log, channel. ARGV: id, now, max_attempts, max_age.
# Returns {verdict, status-or-attempts}.
_START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing', ''} end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return {'terminal', st} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZREM', KEYS[2], ARGV[1])
if attempts > tonumber(ARGV[3]) then return {'exhausted', tostring(attempts)} end
if st == 'queued' then redis.call('HSET', KEYS[1], 'started_at', ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'running')
redis.call('SET', KEYS[3], '', 'NX', 'EX', ARGV[4])
local ev = cjson.encode({type='status', status='running', attempt=attempts})
redis.call('RPUSH', KEYS[4], ev)
redis.call('EXPIRE', KEYS[4], ARGV[4])
redis.call('PUBLISH', KEYS[5], '[' .. ev .. ']')
return {'run', tostring(attempts)}
"""

# KEYS: job, waiting, out, log, channel[, queue stats, queue recent].
# ARGV: id, status, retention, now, required ('' or the state the job must be in), field, value...
# Only a non-terminal job can finish; returns 'ok' or the status it had (then nothing changed).
# With the stats keys, the finished job is also counted (shared.opstats).
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == 'succeeded' or st == 'failed' or st == 'cancelled' then return st end
if ARGV[5] ~= '' and st ~= ARGV[5] then return st end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished_at', ARGV[4])
if #ARGV > 5 then redis.call('HSET', KEYS[1], unpack(ARGV, 6)) end
redis.call('ZREM', KEYS[2], ARGV[1])
local ev = cjson.encode({type='status', status=ARGV[2]})
redis.call('RPUSH', KEYS[4], ev)
redis.call('PUBLISH', KEYS[5], '[' .. ev .. ']')
for i = 1, 4 do
  if i ~= 2 then redis.call('EXPIRE', KEYS[i], ARGV[3]) end
end
""" + RECORD_FINISHED_LUA + """
return 'ok'
"""

# KEYS: job. ARGV: field, value. Sets a field only on a job that still exists
# (an HSET on an expired record would leave a partial one behind).
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


# KEYS: job, out, log, channel, cancel. ARGV: completion_tokens, replay_max, event...
# Events at or below the job's stored seq were already written and are skipped.
_EMIT = """
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local fresh, text = {}, {}
for i = 3, #ARGV do
  local ev = cjson.decode(ARGV[i])
  if ev.seq > seq then
    fresh[#fresh + 1] = ARGV[i]
    text[#text + 1] = ev.text
    seq = ev.seq
  end
end
if #fresh > 0 then
  redis.call('APPEND', KEYS[2], table.concat(text))
  redis.call('RPUSH', KEYS[3], unpack(fresh))
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[2]), -1)
  redis.call('PUBLISH', KEYS[4], '[' .. table.concat(fresh, ',') .. ']')
  redis.call('HSET', KEYS[1], 'seq', seq)
end
redis.call('HSET', KEYS[1], 'completion_tokens', ARGV[1])
return redis.call('EXISTS', KEYS[5])
"""


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return "job_" + secrets.token_urlsafe(16)


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue
        flat.append(name)
        if name in _JSON_FIELDS:
            flat.append(json.dumps(value))
        else:
            flat.append(str(value))
    return flat


def finish_keys(k: Keys, record: JobRecord) -> list[str]:
    """KEYS of the finish script, the queue's operator stats included."""
    return [k.job(record.id), k.waiting(record.queue), k.output(record.id),
            k.events(record.id), k.channel(record.id),
            k.queue_stats(record.queue), k.queue_recent(record.queue)]


@dataclass
class JobRecord:
    """A job as stored (the API adds output and queue position for its view)."""

    id: str
    status: JobStatus
    model: str
    queue: str
    tenant: str
    params: SamplingParams
    messages: list[dict[str, str]]
    created_at: float
    conversation_id: str | None = None
    persona: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    timings: dict[str, float | None] = field(default_factory=dict)
    error: dict[str, str] | None = None
    attempts: int = 0
    seq: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    user_id: str | None = None
    persisted: bool | None = None  # conversation write landed (False: waiting in the outbox)
    history_messages: int | None = None  # stored conversation messages in the prompt
    history_trimmed: int | None = None  # stored messages left out to fit the context

    @classmethod
    def decode(cls, raw: dict[str, str]) -> JobRecord:
        values: dict[str, Any] = dict(raw)
        for name in _JSON_FIELDS:
            if name in values:
                values[name] = json.loads(values[name])
        for name in _FLOAT_FIELDS:
            if name in values:
                values[name] = float(values[name])
        for name in _INT_FIELDS:
            if name in values:
                values[name] = int(values[name])
        values["status"] = JobStatus(values["status"])
        values["params"] = SamplingParams.model_validate(values["params"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class StoreConfig:
    keys: Keys
    max_age_s: int  # TTL of a job record while queued or running
    retention_s: int  # TTL after it finishes
    tombstone_s: int  # how long an expired id still answers 410
    max_queue_depth: int = 100  # waiting jobs per queue before new ones are refused
    replay_max_events: int = 16384  # newest stream events kept for late joiners


def store_config(settings: Settings) -> StoreConfig:
    jobs = settings.jobs
    return StoreConfig(
        keys=Keys(settings.key_prefix),
        max_age_s=jobs.max_age_s,
        retention_s=jobs.retention_s,
        tombstone_s=jobs.tombstone_s,
        replay_max_events=jobs.replay_max_events,
        max_queue_depth=settings.api.max_queue_depth,
    )


class JobStore:
    """The API's side of the job store (redis.asyncio, ``decode_responses=True``)."""

    def __init__(self, client: aredis.Redis, config: StoreConfig) -> None:
        self.redis = client
        self.cfg = config
        self.keys = config.keys
        self._create = client.register_script(_CREATE)
        self._finish = client.register_script(_FINISH)

    async def create(self, record: JobRecord) -> int | None:
        """Write a queued job; its place in line, or None when the queue is full."""
        k = self.keys
        fields = {
            name: getattr(record, name)
            for name in (
                "id", "status", "model", "queue", "tenant", "messages", "created_at",
                "conversation_id", "persona", "metadata", "user_id",
            )
        }
        fields["params"] = record.params.model_dump()
        fields["attempts"] = 0
        place = int(await self._create(
            keys=[k.job(record.id), k.waiting(record.queue), k.tombstone(record.id)],
            args=[record.id, record.created_at, self.cfg.max_age_s,
                  self.cfg.max_age_s + self.cfg.retention_s + self.cfg.tombstone_s,
                  self.cfg.max_queue_depth, *_encode(fields)],
        ))
        return None if place < 0 else place

    async def cancel(self, record: JobRecord) -> tuple[bool, str]:
        """Cancel a job. Returns (changed, status): (True, ``cancelled``) when it was
        queued (it will never run); (True, ``running``) when the worker is asked to stop
        between tokens; (False, status) when it had already finished."""
        k = self.keys
        result = await self._finish(
            keys=finish_keys(k, record),
            args=[record.id, JobStatus.cancelled.value, self.cfg.retention_s, time.time(),
                  JobStatus.queued.value, *_encode({"finish_reason": "cancelled"})],
        )
        if result == "ok":
            return True, JobStatus.cancelled.value
        if result == JobStatus.running.value:
            await self.redis.set(k.cancel(record.id), "1", ex=self.cfg.max_age_s)
            return True, JobStatus.running.value
        return False, str(result)

    async def discard(self, record: JobRecord) -> None:
        """Undo :meth:`create` when the job could not be queued (no half-written job)."""
        k = self.keys
        await self.redis.delete(k.job(record.id), k.tombstone(record.id))
        await self.redis.zrem(k.waiting(record.queue), record.id)

    async def get(self, job_id: str) -> tuple[JobRecord, str] | None:
        """The record and its output so far, or None when there is no such record."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.get(self.keys.output(job_id))
            raw, output = await pipe.execute()
        if not raw:
            return None
        return JobRecord.decode(raw), output or ""

    async def expired(self, job_id: str) -> bool:
        """True when the id belonged to a job whose record has expired."""
        return bool(await self.redis.exists(self.keys.tombstone(job_id)))

    async def read_log(self, job_id: str) -> list[dict[str, Any]]:
        """The job's replay log: every stream event so far, oldest first."""
        raw: list[str] = await self.redis.lrange(  # type: ignore[assignment]
            self.keys.events(job_id), 0, -1)
        return [json.loads(item) for item in raw]

    async def position(self, record: JobRecord) -> int | None:
        """How many of the queue's waiting jobs are ahead of this one."""
        rank: int | None = await self.redis.zrank(  # type: ignore[assignment]
            self.keys.waiting(record.queue), record.id)
        return rank


class WorkerJobStore:
    """The worker's side of the job store (blocking redis, inside the task).

    The client must be created with ``decode_responses=True``.
    """

    def __init__(self, client: redis.Redis, config: StoreConfig) -> None:
        self.redis = client
        self.cfg = config
        self.keys = config.keys
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._emit = client.register_script(_EMIT)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)

    def load(self, job_id: str) -> tuple[JobRecord, str] | None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.keys.job(job_id))
            pipe.get(self.keys.output(job_id))
            raw, output = pipe.execute()
        if not raw:
            return None
        return JobRecord.decode(raw), output or ""

    def start(self, record: JobRecord, max_attempts: int) -> tuple[str, str]:
        """Move the job to running. Returns (verdict, detail): verdict is
        ``run`` (detail: attempt number), ``missing``, ``terminal`` (detail: status)
        or ``exhausted`` (too many deliveries)."""
        k = self.keys
        verdict, detail = self._start(
            keys=[k.job(record.id), k.waiting(record.queue), k.output(record.id),
                  k.events(record.id), k.channel(record.id)],
            args=[record.id, time.time(), max_attempts, self.cfg.max_age_s],
        )
        return str(verdict), str(detail)

    def finish(self, record: JobRecord, status: JobStatus, **fields: Any) -> str:
        """Move a running job to a terminal state; returns 'ok' or the status it already had."""
        k = self.keys
        result = self._finish(
            keys=finish_keys(k, record),
            args=[record.id, status.value, self.cfg.retention_s, time.time(), "",
                  *_encode(fields)],
        )
        return str(result)

    def emit(self, record: JobRecord, events: list[dict[str, Any]],
             completion_tokens: int) -> bool:
        """Append a batch of token events to output, replay log and channel, in one
        round trip; returns True when the job has been asked to cancel.

        Idempotent: events at or below the job's stored seq were already written and
        are skipped, so re-sending a batch after an interruption is harmless.
        """
        k = self.keys
        cancel = self._emit(
            keys=[k.job(record.id), k.output(record.id), k.events(record.id),
                  k.channel(record.id), k.cancel(record.id)],
            args=[completion_tokens, self.cfg.replay_max_events,
                  *(json.dumps(e, separators=(",", ":")) for e in events)],
        )
        return bool(cancel)

    def mark_persisted(self, job_id: str) -> None:
        """The job's conversation write has landed (after waiting in the outbox)."""
        self._set_if_exists(keys=[self.keys.job(job_id)], args=["persisted", "true"])

    def output(self, job_id: str) -> str:
        """The job's output text as written so far."""
        return str(self.redis.get(self.keys.output(job_id)) or "")

