"""The operator's view of the queues: depth, running jobs, live workers, finished-job stats.

Read from Redis on every request (Celery's broker lists, the workers'
heartbeats and the stats the finish script keeps, see :mod:`shared.opstats`),
so it is the same in every API process. Serves ``/v1/queues`` and ``/metrics``.

An operator (an admin key) sees every worker as its heartbeat tells it. A tenant
sees counts for everything (depth, running, slots, totals) but of the workers only
what says nothing about the machines or other tenants: no worker id, host name,
pid or upstream URL, and among the running jobs only its own (:func:`for_tenant`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aredis

from api.services import Services
from shared.errors import Unavailable
from shared.keys import celery_queue_lists
from shared.opstats import QueueCounters, read_queue
from shared.redis_conn import async_client


@dataclass
class QueueView:
    queue: str
    model: str | None  # the registry's model for the queue (None: not in the registry)
    depth: int  # messages waiting in the broker, every priority level
    workers: list[dict[str, str]] = field(default_factory=list)  # live heartbeats
    counters: QueueCounters = field(default_factory=QueueCounters)
    recent: list[dict[str, Any]] = field(default_factory=list)  # newest first
    running: int = 0  # jobs a live worker is running now

    @property
    def slots(self) -> int:
        """Jobs the live workers can generate at once."""
        return sum(int(w.get("slots") or 1) for w in self.workers)

    @property
    def slots_busy(self) -> int:
        return sum(int(w.get("slots_busy") or 0) for w in self.workers)

    def cache_sum(self, name: str) -> int:
        """A prompt cache gauge (``prompt_cache_{name}``) over the live workers."""
        return sum(int(w.get(f"prompt_cache_{name}") or 0) for w in self.workers)


async def _running(svc: Services, workers: list[dict[str, str]]) -> dict[str, int]:
    """Per queue, the running jobs of live workers (from the lifecycle's running list,
    which is exact, rather than heartbeats, which lag by up to one beat)."""
    queue_of = {w.get("worker_id"): w.get("queue", "") for w in workers}
    counts: dict[str, int] = {}
    for worker in (await svc.jobs(svc.jobs.ops.running())).values():
        if worker in queue_of:
            counts[queue_of[worker]] = counts.get(queue_of[worker], 0) + 1
    return counts


async def _depths(svc: Services, queues: list[str]) -> dict[str, int]:
    """Sum of LLEN over each queue's broker lists (the broker may be another Redis)."""
    same = svc.settings.broker_url == svc.settings.redis_url
    client = svc.redis if same else async_client(
        svc.settings.broker_url, socket_connect_timeout=2, socket_timeout=5)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for name in celery_queue_lists(queue):
                    pipe.llen(name)
            lengths = await pipe.execute()
    finally:
        if not same:
            await client.aclose()
    per = len(celery_queue_lists(""))
    return {q: sum(lengths[i * per:(i + 1) * per]) for i, q in enumerate(queues)}


async def overview(svc: Services, recent: int = 1000) -> list[QueueView]:
    """Every queue of the registry (and any other queue a live worker serves)."""
    workers = await svc.live_workers()
    queues = sorted(set(svc.registry.queues) | {w["queue"] for w in workers if w.get("queue")})
    try:
        depths = await _depths(svc, queues)
        running = await _running(svc, workers)
        stats = {q: await read_queue(svc.redis, svc.keys, q, recent) for q in queues}
    except aredis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc
    models = {spec.queue: spec.name for spec in svc.registry.models.values()}
    return [
        QueueView(queue=q, model=models.get(q), depth=depths[q],
                  workers=[w for w in workers if w.get("queue") == q],
                  counters=stats[q][0], recent=stats[q][1], running=running.get(q, 0))
        for q in queues
    ]


def worker_summary(beat: dict[str, str], now: float | None = None) -> dict[str, Any]:
    """What an operator wants to see of one worker's heartbeat."""
    now = now or time.time()
    return {
        "worker_id": beat.get("worker_id"),
        "hostname": beat.get("hostname"),
        "pid": int(beat["pid"]) if beat.get("pid") else None,
        "model": beat.get("model"),
        "gpu_layers": int(beat["gpu_layers"]) if beat.get("gpu_layers") else None,
        # as llama.cpp reports them from the loaded context
        "n_ctx": int(beat["n_ctx"]) if beat.get("n_ctx") else None,
        "n_batch": int(beat["n_batch"]) if beat.get("n_batch") else None,
        # a worker that forwards to a remote OpenAI-compatible server (no credentials)
        "upstream": {"kind": beat.get("upstream_kind"), "url": beat.get("upstream_url"),
                     "model": beat.get("upstream_model")} if beat.get("upstream_url") else None,
        "jobs_done": int(beat.get("jobs_done") or 0),
        "slots": int(beat.get("slots") or 1),
        "slots_busy": int(beat.get("slots_busy") or 0),
        "running": json.loads(beat.get("running") or "[]"),
        "prompt_cache": _prompt_cache(beat),
        "seconds_since_beat": round(now - float(beat.get("last_beat") or now), 3),
    }


def _prompt_cache(beat: dict[str, str]) -> dict[str, int] | None:
    """The worker's prompt cache: sequences kept in its slots, tokens cached (slots and
    host memory), sequences and bytes in host memory (None: an engine without one)."""
    if "prompt_cache_tokens" not in beat:
        return None
    return {name: int(beat.get(f"prompt_cache_{name}") or 0)
            for name in ("slots", "tokens", "host_entries", "host_bytes", "disk_entries",
                         "disk_bytes")}


# What a tenant must not see of a worker: where it runs (host, pid, upstream server).
_OPERATOR_ONLY = ("worker_id", "hostname", "pid", "upstream")


async def job_tenants(svc: Services, views: list[QueueView]) -> dict[str, str]:
    """The tenant of every job the live workers say they run."""
    ids = sorted({job_id for view in views for beat in view.workers
                  for job_id in json.loads(beat.get("running") or "[]")})
    if not ids:
        return {}
    try:
        async with svc.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(svc.keys.job(job_id), "tenant")
            tenants = await pipe.execute()
    except aredis.RedisError as exc:
        raise Unavailable(f"Redis is unreachable: {exc}") from exc
    return {job_id: _text(t) for job_id, t in zip(ids, tenants, strict=True) if t}


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def for_tenant(summary: dict[str, Any], tenant: str, owners: dict[str, str]) -> dict[str, Any]:
    """A worker's summary as a tenant sees it: its own running jobs, nothing operator-only."""
    shown = {k: v for k, v in summary.items() if k not in _OPERATOR_ONLY}
    shown["running"] = [j for j in summary["running"] if owners.get(j) == tenant]
    return shown
