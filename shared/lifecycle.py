"""A job's life, owned by one module: every state change and every job-hash write.

A job is a Redis hash (see :mod:`shared.keys`). It moves::

    queued -> running -> succeeded | failed | cancelled
    queued -> cancelled | expired            running -> queued (requeued, its worker gone)

only through the Lua scripts in ``shared/lua/`` (one file each, KEYS/ARGV
contract at the top), so two deliveries of one job, a cancel racing a start or
two recovery sweepers can never both win. What must hold:

- **One writer.** Nothing outside this module writes a job hash: the API, the
  worker, the persister and the recovery sweeper all go through :class:`Lifecycle`.
- **Every change is announced in the same script that makes it**: a status event
  on the job's replay log and channel (streams, long polls) and a
  :class:`shared.events.Transition` on the durable transition log (consumers
  that must not miss one: webhooks, recovery, metrics). A finished job is
  counted in its queue's stats in that step too (:mod:`shared.opstats`), so it
  is counted once however often it was delivered.
- **One owner.** ``start`` hands a queued job to one worker (``owner``) for one
  ``dispatch`` (a number bumped at each requeue and carried by the broker
  message); a message of an older dispatch is stale, a second message of the
  same one finds the job busy. ``emit`` and ``finish`` check the owner, so a
  worker presumed dead cannot write into a job that moved on.

The operations are I/O-free: :class:`Lifecycle` builds an :class:`Op` (script,
keys, arguments, and how to read the answer) and one of two thin adapters runs
it: :class:`AsyncJobs` (redis.asyncio, the API) or :class:`BlockingJobs` (redis,
the worker and the sweeper). Both clients use ``decode_responses=True``.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aredis

from shared import events
from shared.events import StreamEventT, TokenEvent
from shared.keys import Keys
from shared.opstats import HISTOGRAMS, RECENT_MAX, lua_bound
from shared.schemas import TERMINAL, JobKind, JobStatus, Priority, SamplingParams
from shared.settings import Settings

LUA_DIR = Path(__file__).with_name("lua")

# Fields stored as JSON inside the job hash; the rest are plain strings/numbers.
_JSON_FIELDS = ("params", "messages", "persona", "metadata", "usage", "timings", "error",
                "persisted", "webhook_events", "inputs", "result", "tools", "fresh_conversation",
                "rate", "response", "answer_schema")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "expires_at", "rank", "run_at",
                 "cancel_at")
_INT_FIELDS = ("attempts", "seq", "completion_tokens", "prompt_tokens", "history_messages",
               "history_trimmed", "dispatch", "deaths", "lane")

PRIORITY_BAND_S = 1e10  # added to a batch job's rank: it sorts after every interactive one
# Added to the rank of a job its tenant sends past its fair share: it sorts after every
# job of its priority that is within a share, and before the next priority's.
BEHIND_BAND_S = 5e9
# A job's lane is its Celery priority: the Redis transport keeps one list per lane and
# polls 0, 3, 6, 9 in that order. Interactive jobs within their tenant's share go in lane
# 0, past it in 3; batch jobs in 6 and 9.
LANES = {Priority.interactive: 0, Priority.batch: 6}
USAGE_TTL_S = 400 * 86400  # a tenant's usage of a day is kept this long (GET /v1/usage)
LANE_BEHIND = 3


def new_job_id() -> str:
    """An unguessable job id (128 random bits)."""
    return "job_" + secrets.token_urlsafe(16)


def new_lease() -> str:
    """A token for one run of a job: its writes are fenced by it."""
    return secrets.token_hex(8)


def _encode(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for name, value in fields.items():
        if value is None:
            continue
        flat.append(name)
        flat.append(json.dumps(value) if name in _JSON_FIELDS else str(value))
    return flat


def _error(code: str, message: str) -> str:
    return json.dumps({"code": code, "message": message})


@dataclass
class JobRecord:
    """A job as stored (the API adds output and queue position for its view)."""

    id: str
    status: JobStatus
    model: str
    queue: str
    tenant: str
    params: SamplingParams
    messages: list[dict[str, Any]]
    created_at: float
    conversation_id: str | None = None
    # The API made conversation_id for this job: it has no stored turns to load.
    fresh_conversation: bool = False
    persona: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    priority: Priority = Priority.interactive
    lane: int = 0  # its broker lane (see LANES); create sets it, past a fair share or not
    expires_at: float | None = None  # a job not started by then ends `expired`
    cancel_at: float | None = None  # the caller's deadline (cancel_after): no start, no run after
    webhook: str | None = None  # called on webhook_events (see shared.webhooks)
    webhook_events: list[str] | None = None
    tools: dict[str, Any] | None = None  # the request's functions and tool_choice (ToolSet)
    # response_format's JSON schema: the finished answer is validated against it
    answer_schema: dict[str, Any] | None = None
    dispatch: int = 1  # the broker message that may start it (bumped at each requeue)
    owner: str | None = None  # the worker running it
    lease: str | None = None  # the run holding it (a new one at each start)
    run_at: float | None = None  # when the run holding it started
    started_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None  # OpenAI's usage (prompt_tokens_details included)
    timings: dict[str, float | None] = field(default_factory=dict)
    error: dict[str, str] | None = None
    attempts: int = 0
    # Runs of it that ended with their worker's death: one makes it suspect (it runs
    # alone next time); a second fails it `worker_lost` (see shared/lua/requeue.lua).
    deaths: int = 0
    seq: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    user_id: str | None = None
    persisted: bool | None = None  # conversation write landed (False: waiting in the outbox)
    history_messages: int | None = None  # stored conversation messages in the prompt
    history_trimmed: int | None = None  # stored messages left out to fit the context
    kind: JobKind = JobKind.chat  # see JobKind: chat, completion (raw prompt) or embedding
    inputs: list[str] | None = None  # completion: [prompt]; embedding: the texts
    result: dict[str, Any] | None = None  # embedding: its vectors (see shared.vectors)
    rate: dict[str, Any] | None = None  # what it took from its tenant's rate limits
    # A Responses API job: what its request asked that the response object echoes
    # (instructions, store, background, text, tools...; see shared.responses).
    response: dict[str, Any] | None = None

    @property
    def suspect(self) -> bool:
        """Its worker died while running it: it may be what killed the worker."""
        return self.deaths > 0

    @property
    def rank(self) -> float:
        """Its score in the queue's waiting line: by priority, then submit time."""
        band = PRIORITY_BAND_S if self.priority is Priority.batch else 0.0
        return band + self.created_at

    @property
    def rank_behind(self) -> float:
        """Its score in line when its tenant has its fair share waiting already."""
        return self.rank + BEHIND_BAND_S

    @classmethod
    def decode(cls, raw: dict[str, str]) -> JobRecord:
        values: dict[str, Any] = dict(raw)
        for names, convert in ((_JSON_FIELDS, json.loads), (_FLOAT_FIELDS, float),
                               (_INT_FIELDS, int)):
            for name in names:
                if name in values:
                    values[name] = convert(values[name])
        values["status"] = JobStatus(values["status"])
        values["priority"] = Priority(values.get("priority") or Priority.interactive)
        values["kind"] = JobKind(values.get("kind") or JobKind.chat)
        values["params"] = SamplingParams.model_validate(values["params"])
        values["owner"] = values.get("owner") or None
        values["lease"] = values.get("lease") or None
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in values.items() if k in known})

    def create_fields(self) -> dict[str, Any]:
        names = ("id", "status", "model", "queue", "tenant", "messages", "created_at",
                 "conversation_id", "persona", "metadata", "user_id", "priority",
                 "expires_at", "dispatch", "cancel_at", "webhook", "webhook_events", "kind",
                 "inputs", "tools", "fresh_conversation", "rate", "response", "answer_schema")
        fields = {name: getattr(self, name) for name in names}
        return {**fields, "params": self.params.model_dump(), "attempts": 0, "rank": self.rank,
                "lane": LANES[self.priority]}


@dataclass(frozen=True)
class StoreConfig:
    keys: Keys
    max_age_s: int  # a job not started by then expires; a running job's record lives this long
    retention_s: int  # a finished job is kept this long
    tombstone_s: int  # how long an expired id still answers 410
    max_queue_depth: int = 1000  # waiting jobs per queue (all tenants), then refused
    max_tenant_queue_depth: int = 100  # waiting jobs of one tenant per queue
    fair_share: int = 1  # a tenant's waiting jobs per queue and priority before it waits behind
    replay_max_events: int = 16384  # newest stream events kept for late joiners
    transitions_max: int = 100_000  # transition log entries kept (approximately)
    cancel_flag_s: int = 3600  # how long a running job's cancel request stays


def store_config(settings: Settings) -> StoreConfig:
    jobs = settings.jobs
    return StoreConfig(
        keys=Keys(settings.key_prefix), max_age_s=jobs.max_age_s,
        retention_s=jobs.retention_s, tombstone_s=jobs.tombstone_s,
        replay_max_events=jobs.replay_max_events, transitions_max=jobs.transitions_max,
        max_queue_depth=settings.api.max_queue_depth,
        max_tenant_queue_depth=settings.api.max_tenant_queue_depth,
        fair_share=settings.api.fair_share,
    )


# --- results of the operations ----------------------------------------------------


class QueueLimit(Enum):
    """Why ``create`` wrote nothing: the line is full, or the tenant's share of it is."""

    queue = -1
    tenant = -2



@dataclass(frozen=True)
class Loaded:
    record: JobRecord | None  # None: no such job
    output: str
    gone: bool  # the id belonged to a job whose record expired (410, not 404)


@dataclass(frozen=True)
class Started:
    verdict: str  # run | missing | terminal | stale | busy | expired
    detail: str  # run: the attempt number; terminal: the status; busy: the owner...

    @property
    def attempt(self) -> int:
        return int(self.detail) if self.verdict == "run" else 0


class Emitted(StrEnum):
    ok = "ok"
    cancel = "cancel"  # the job was asked to stop
    lost = "lost"  # the job is not this run's any more
    gap = "gap"  # Redis lost acknowledged events: re-send after the stored seq


@dataclass(frozen=True)
class EmitResult:
    verdict: Emitted
    stored_seq: int  # the job's seq in Redis after the call


@dataclass(frozen=True)
class Cancelled:
    verdict: str  # cancelled (it was queued) | stopping (it runs) | ended | missing
    status: str  # the job's status after the call

    @property
    def changed(self) -> bool:
        return self.verdict in ("cancelled", "stopping")


@dataclass(frozen=True)
class Requeued:
    verdict: str  # requeued | failed | cancelled | skip
    dispatch: int = 0


@dataclass(frozen=True)
class Unsent:
    """A queued job whose broker message must be (re)sent."""

    job_id: str
    queue: str
    dispatch: int
    lane: int  # its broker lane (see LANES)


@dataclass(frozen=True)
class Op[T]:
    """One atomic step: a script of ``shared/lua``, its KEYS and ARGV, and how to read
    its answer. Built by :class:`Lifecycle`, run by an adapter."""

    script: str
    keys: tuple[str, ...]
    args: tuple[Any, ...]
    parse: Callable[[Any], T]


def _text(value: Any) -> str:
    return str(value)


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


# --- the operations ------------------------------------------------------------------


class Lifecycle:
    """Every operation on jobs, as :class:`Op` s (no I/O here)."""

    def __init__(self, config: StoreConfig) -> None:
        self.cfg = config
        self.keys = config.keys

    def _finish_keys(self, job_id: str, queue: str) -> tuple[str, ...]:
        """KEYS of every script that can end a job (lib.lua: finish_keys), in order."""
        k = self.keys
        return (k.job(job_id), k.waiting(queue), k.running(), k.unsent(), k.expiry(),
                k.output(job_id), k.replay(job_id), k.channel(job_id), k.cancel(job_id),
                k.transitions(), k.queue_stats(queue), k.queue_recent(queue))

    def _create_keys(self, job_id: str, queue: str) -> tuple[str, ...]:
        k = self.keys
        return (k.job(job_id), k.waiting(queue), k.tombstone(job_id), k.unsent(), k.expiry(),
                k.transitions())

    # creating and sending

    def create(self, record: JobRecord) -> Op[int | QueueLimit]:
        """Write a queued job: its place in line, or which limit refused it: the queue's
        line is full (all tenants), or the job's tenant has its most jobs in that line.
        When the tenant already has ``fair_share`` jobs of this priority waiting, the job
        waits behind every other tenant's within their share: ``record.lane`` and its
        rank say so (set here from the script's answer).

        A job not started by ``max_age_s`` after its submit, or by its ``cancel_at``
        (the earlier), expires (``start`` and the sweeper's ``expire`` see to it)."""
        cfg = self.cfg
        if record.expires_at is None:
            record.expires_at = record.created_at + cfg.max_age_s
            if record.cancel_at is not None:
                record.expires_at = min(record.expires_at, record.cancel_at)
        args = (record.id, record.created_at, cfg.max_age_s + cfg.retention_s,
                cfg.max_age_s + cfg.retention_s + cfg.tombstone_s, cfg.max_queue_depth,
                record.rank, record.expires_at, cfg.transitions_max, self.keys.job(""),
                cfg.max_tenant_queue_depth, record.tenant, cfg.fair_share,
                record.rank_behind, LANES[record.priority] + LANE_BEHIND,
                *_encode(record.create_fields()))

        def placed(answer: list[int] | int) -> int | QueueLimit:
            if not isinstance(answer, list):
                return QueueLimit(int(answer))
            place, record.lane = int(answer[0]), int(answer[1])
            return place

        return Op("create", self._create_keys(record.id, record.queue), args, placed)

    # prompt-cache affinity (shared.affinity)

    def route(self, record: JobRecord, turn: str, horizon: float) -> Op[str]:
        """Route the job's message of this dispatch to the worker noted under ``turn``
        when it beat since ``horizon`` and has a free slot: that worker's id, or ''."""
        k = self.keys
        return Op("route", (k.job(record.id), k.affinity(record.queue, record.tenant, turn),
                            k.routed(), k.workers()),
                  (record.id, record.dispatch, time.time(), horizon, k.worker("")), _text)

    def stranded(self, horizon: float, limit: int = 100) -> Op[list[tuple[str, str, str]]]:
        """Routed jobs still waiting for a worker with no beat since ``horizon``:
        (job id, queue, worker id)."""

        def parse(flat: list[str]) -> list[tuple[str, str, str]]:
            return [(flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3)]

        return Op("stranded", (self.keys.routed(), self.keys.workers()),
                  (horizon, self.keys.job(""), limit), parse)

    def reroute(self, job_id: str, worker: str) -> Op[int]:
        """A stranded job goes back to its shared queue under a new dispatch, listed
        unsent: that dispatch, or 0 when it no longer waits for ``worker``."""
        k = self.keys
        return Op("reroute", (k.job(job_id), k.routed(), k.unsent()), (job_id, worker), int)

    def sent(self, job_id: str, dispatch: int) -> Op[bool]:
        """The broker took the job's message of this dispatch."""
        return Op("sent", (self.keys.job(job_id), self.keys.unsent()), (job_id, dispatch), bool)

    def discard(self, record: JobRecord) -> Op[bool]:
        """Undo :meth:`create` when the broker refused the message (no half-written job)."""
        return Op("discard", self._create_keys(record.id, record.queue),
                  (record.id, time.time(), self.cfg.transitions_max), bool)

    def delete(self, record: JobRecord) -> Op[str]:
        """Remove a finished job, its output and its replay log: 'deleted', 'missing', or
        'running' when it has not finished (nothing changed)."""
        k = self.keys
        return Op("delete", (k.job(record.id), k.output(record.id), k.replay(record.id),
                             k.tombstone(record.id), k.transitions()),
                  (record.id, time.time(), self.cfg.transitions_max), _text)

    def claim_unsent(self, grace_s: float, limit: int = 100) -> Op[list[Unsent]]:
        """Queued jobs whose message was not confirmed for ``grace_s``; claimed for sending."""
        now = time.time()

        def parse(flat: list[str]) -> list[Unsent]:
            return [Unsent(flat[i], flat[i + 1], int(flat[i + 2]), int(flat[i + 3] or 0))
                    for i in range(0, len(flat), 4)]

        return Op("claim_unsent", (self.keys.unsent(),),
                  (now - grace_s, now, limit, self.keys.job("")), parse)

    # running

    def start(self, job_id: str, queue: str, dispatch: int, worker: str,
              lease: str) -> Op[Started]:
        """Hand a queued job to this run of ``worker``; ``lease`` (see :func:`new_lease`)
        is what later writes of the run are checked against."""
        cfg = self.cfg
        args = (job_id, dispatch, worker, time.time(), cfg.max_age_s, cfg.retention_s,
                cfg.transitions_max, _error("expired", "the job did not start before its "
                                                       "deadline; it never ran"), lease)
        return Op("start", self._finish_keys(job_id, queue), args,
                  lambda reply: Started(str(reply[0]), str(reply[1])))

    def emit(self, record: JobRecord, lease: str, batch: Iterable[TokenEvent],
             completion_tokens: int) -> Op[EmitResult]:
        """Append token events to output, replay log and channel; idempotent by seq."""
        k = self.keys
        keys = (k.job(record.id), k.output(record.id), k.replay(record.id),
                k.channel(record.id), k.cancel(record.id))
        args = (lease, completion_tokens, self.cfg.replay_max_events,
                *(events.encode(e) for e in batch))
        return Op("emit", keys, args,
                  lambda reply: EmitResult(Emitted(reply[0]), int(reply[1])))

    def finish(self, record: JobRecord, status: JobStatus, lease: str,
               **fields: Any) -> Op[str]:
        """End a running job this run holds: 'ok', or why nothing changed."""
        error = fields.get("error") or {}
        args = (record.id, status.value, lease, time.time(), self.cfg.retention_s,
                self.cfg.transitions_max, error.get("code", ""), *_encode(fields))
        return Op("finish", self._finish_keys(record.id, record.queue), args, _text)

    # ending from outside the worker

    def cancel(self, record: JobRecord) -> Op[Cancelled]:
        """Stop a job: a queued one ends now (it never runs), a running one's worker is
        asked to stop (a message on the cancel channel, and the flag its next write of
        tokens reads); one that has ended is left as it is."""
        cfg = self.cfg
        args = (record.id, time.time(), cfg.retention_s, cfg.transitions_max, cfg.cancel_flag_s,
                self.keys.cancels())
        return Op("cancel", self._finish_keys(record.id, record.queue), args,
                  lambda reply: Cancelled(str(reply[0]), str(reply[1])))

    def expire(self, record: JobRecord) -> Op[str]:
        """End a queued job that was due to start before now: 'expired', or why not."""
        cfg = self.cfg
        args = (record.id, time.time(), cfg.retention_s, cfg.transitions_max,
                _error("expired", "the job did not start before its deadline; it never ran"))
        return Op("expire", self._finish_keys(record.id, record.queue), args, _text)

    def requeue(self, record: JobRecord, gone_worker: str, max_attempts: int,
                died: bool = True) -> Op[Requeued]:
        """The job's run is over without an end: back to the queue, or failed
        ``worker_lost``. ``died``: its worker is gone (not a run that broke off under a
        live worker), which makes the job suspect, or fails it when it already was."""
        cfg = self.cfg
        args = (record.id, gone_worker, time.time(), max_attempts, cfg.retention_s,
                cfg.transitions_max, "the worker died while running this job",
                1 if died else 0, "the worker died twice while running this job")
        return Op("requeue", self._finish_keys(record.id, record.queue), args,
                  lambda reply: Requeued(str(reply[0]), int(reply[1] or 0)))

    def due(self, limit: int = 100) -> Op[list[str]]:
        """Ids of queued jobs whose start deadline has passed."""
        return Op("due", (self.keys.expiry(),), (time.time(), limit), list)

    def running(self) -> Op[dict[str, str]]:
        """Every running job and its worker."""
        return Op("running", (self.keys.running(),), (), _pairs)

    # reading

    def load(self, job_id: str) -> Op[Loaded]:
        k = self.keys

        def parse(reply: list[Any]) -> Loaded:
            fields, output, gone = reply
            record = JobRecord.decode(_pairs(fields)) if fields else None
            return Loaded(record, str(output), bool(gone))

        return Op("load", (k.job(job_id), k.output(job_id), k.tombstone(job_id)), (), parse)

    def read_log(self, job_id: str) -> Op[list[StreamEventT]]:
        """The job's replay log: its stream events so far, oldest first."""
        return Op("read_log", (self.keys.replay(job_id),), (), events.parse_log)

    def position(self, record: JobRecord) -> Op[int | None]:
        """How many of the queue's waiting jobs start before this one (None: not waiting)."""
        return Op("position", (self.keys.waiting(record.queue),), (record.id,),
                  lambda rank: None if rank is None else int(rank))

    # conversations

    def set_persisted(self, job_id: str) -> Op[bool]:
        """The job's conversation write landed (after waiting in the outbox)."""
        return Op("set_if_exists", (self.keys.job(job_id),), ("persisted", "true"), bool)

    def park(self, job_id: str, entry: str, dead: bool = False) -> Op[bool]:
        """Park a conversation write in the outbox (or the dead list); the job says
        ``persisted: false`` in the same step."""
        target = self.keys.outbox_dead() if dead else self.keys.outbox()
        return Op("park", (self.keys.job(job_id), target), (entry,), bool)

    # workers

    def live_workers(self, ttl_s: float) -> Op[list[dict[str, str]]]:
        """Heartbeats of the workers seen in the last ``ttl_s`` seconds."""
        return Op("live_workers", (self.keys.workers(),),
                  (time.time() - ttl_s, self.keys.worker("")),
                  lambda beats: [_pairs(b) for b in beats])


# --- the scripts and the two adapters ----------------------------------------------------


def lua_constants() -> str:
    """The Python definitions the scripts share, as Lua: terminal statuses and the
    operator histograms (so neither is written twice)."""
    terminal = ", ".join(f"{s.value} = true" for s in sorted(TERMINAL))
    rows = []
    for h in HISTOGRAMS:
        bounds = ", ".join(f"{{{b!r}, '{lua_bound(b)}'}}" for b in h.bounds)
        rows.append(f"{{'{h.name}', '{h.timing}', {h.scale!r}, {{{bounds}}}}}")
    return (f"local TERMINAL = {{{terminal}}}\n"
            f"local HISTOGRAMS = {{\n  " + ",\n  ".join(rows) + "\n}\n"
            f"local RECENT_MAX = {RECENT_MAX}\n"
            f"local USAGE_TTL_S = {USAGE_TTL_S}\n")


@functools.cache
def script_source(name: str) -> str:
    """A script as Redis runs it: generated constants, then lib.lua, then the script."""
    return "\n".join((lua_constants(), (LUA_DIR / "lib.lua").read_text(),
                      (LUA_DIR / f"{name}.lua").read_text()))


SCRIPTS = tuple(sorted(p.stem for p in LUA_DIR.glob("*.lua") if p.stem != "lib"))


class BlockingJobs:
    """Runs :class:`Op` s on a blocking Redis client (the worker, the sweeper)."""

    def __init__(self, client: redis.Redis, config: StoreConfig) -> None:
        self.redis = client
        self.ops = Lifecycle(config)
        self.keys = config.keys
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    def __call__[T](self, op: Op[T]) -> T:
        return op.parse(self._scripts[op.script](keys=op.keys, args=op.args))


class AsyncJobs:
    """Runs :class:`Op` s on a redis.asyncio client (the API)."""

    def __init__(self, client: aredis.Redis, config: StoreConfig) -> None:
        self.redis = client
        self.ops = Lifecycle(config)
        self.keys = config.keys
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPTS}

    async def __call__[T](self, op: Op[T]) -> T:
        return op.parse(await self._scripts[op.script](keys=op.keys, args=op.args))
